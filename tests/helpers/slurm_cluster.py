"""A real single-node SLURM cluster for tests, from Debian's packages, in a temporary folder.

`SlurmCluster(root).start()` installs the packages when they are missing (apt-get, as root),
then runs every daemon in the foreground as a child of the test process: munged, MariaDB (for
accounting: submitit polls job states with `sacct`, and without slurmdbd a job SLURM kills leaves
the sweep waiting forever), slurmdbd, slurmctld and slurmd. Configuration, state, sockets and
logs all live under `root`; nothing under /etc or /run is used, so it runs beside a system
SLURM or MariaDB. `stop()` ends everything it started, by PID. Every wait has a time limit.
Clients find the cluster through the SLURM_CONF variable in `cluster.env`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

PACKAGES = ("munge", "slurmctld", "slurmd", "slurm-client", "slurmdbd", "mariadb-server")
BINARIES = ("munged", "mariadbd", "mariadb-install-db", "slurmdbd", "slurmctld", "slurmd", "sbatch")
CLUSTER = "ichsegtest"


class ClusterError(RuntimeError):
    """The cluster could not be installed or started; the message names the step."""


def missing_binaries() -> list[str]:
    """Daemons and clients of BINARIES not on PATH (or in /usr/sbin)."""
    path = f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"
    return [b for b in BINARIES if shutil.which(b, path=path) is None]


def install_packages(timeout_s: float = 600) -> None:
    """apt-get install the SLURM and MariaDB packages, without starting any system service."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
    # Package scripts would start munge/MariaDB/SLURM system services; exit 101 forbids it.
    policy = Path("/usr/sbin/policy-rc.d")
    own_policy = not policy.exists()
    if own_policy:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=timeout_s)
        if result.returncode != 0:  # stale or missing package lists on a fresh machine
            subprocess.run(
                ["apt-get", "update", "-q"], env=env, capture_output=True, timeout=timeout_s
            )
            result = subprocess.run(
                install, env=env, capture_output=True, text=True, timeout=timeout_s
            )
    finally:
        if own_policy:
            policy.unlink(missing_ok=True)
    if result.returncode != 0:
        tail = "\n".join(result.stdout.splitlines()[-20:] + result.stderr.splitlines()[-20:])
        raise ClusterError(f"apt-get install {' '.join(PACKAGES)} failed:\n{tail}")


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(what: str, ready: Callable[[], bool], timeout_s: float, poll_s: float = 0.25) -> None:
    """Poll `ready()` until it is true; ClusterError naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            raise ClusterError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(poll_s)


def port_open(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:`port`."""
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


def _proc_stat(pid: int) -> tuple[int, int] | None:
    """(parent PID, start time in clock ticks) of a live process, None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), int(fields[19])


def descendants(pid: int) -> list[tuple[int, int]]:
    """(PID, start time) of every live process below `pid`, read from /proc."""
    children: dict[int, list[tuple[int, int]]] = {}
    for entry in Path("/proc").iterdir():
        stat = _proc_stat(int(entry.name)) if entry.name.isdigit() else None
        if stat is not None:
            children.setdefault(stat[0], []).append((int(entry.name), stat[1]))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child[0])
    return found


def kill_if_same(pid: int, started: int) -> None:
    """SIGKILL `pid` unless it has exited (or its number now belongs to another process)."""
    stat = _proc_stat(pid)
    if stat is not None and stat[1] == started:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


class SlurmCluster:
    """One node (this machine) running slurmctld + slurmd, with slurmdbd accounting."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.host = socket.gethostname().split(".")[0]
        self.procs: dict[str, subprocess.Popen] = {}
        self.conf = self.root / "etc" / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    # -- files -------------------------------------------------------------------------------
    def path(self, *parts: str) -> Path:
        """A path under the cluster's folder."""
        return self.root.joinpath(*parts)

    def node_line(self) -> str:
        """This machine's NodeName line, as `slurmd -C` measures it."""
        out = subprocess.run(
            ["slurmd", "-C"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
        line = next(ln for ln in out.splitlines() if ln.startswith("NodeName="))
        fields = dict(f.split("=", 1) for f in line.split())
        fields["NodeName"] = self.host
        fields["NodeAddr"] = "127.0.0.1"
        return " ".join(f"{k}={v}" for k, v in fields.items()) + " State=UNKNOWN"

    def write_config(self) -> None:
        """munge key, slurm.conf, slurmdbd.conf and cgroup.conf under the cluster's folder."""
        for sub in ("etc", "munge", "state", "spool", "log", "run", "mysql"):
            self.path(sub).mkdir(parents=True, exist_ok=True, mode=0o700)
        # munged wants its socket's folder open to every client.
        self.path("run").chmod(0o755)
        key = self.path("munge", "munge.key")
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self.ports = {name: free_port() for name in ("ctld", "slurmd", "dbd", "mysql")}
        munge = f"socket={self.path('run', 'munge.sock')}"
        log, run = self.path("log"), self.path("run")
        self.conf.write_text(
            "\n".join(
                [
                    f"ClusterName={CLUSTER}",
                    f"SlurmctldHost={self.host}(127.0.0.1)",
                    "SlurmUser=root",
                    "SlurmdUser=root",
                    f"SlurmctldPort={self.ports['ctld']}",
                    f"SlurmdPort={self.ports['slurmd']}",
                    "AuthType=auth/munge",
                    "CredType=cred/munge",
                    # cred_expire also delays a requeued job's restart (default 120 s).
                    f"AuthInfo={munge},cred_expire=15",
                    f"StateSaveLocation={self.path('state')}",
                    f"SlurmdSpoolDir={self.path('spool')}",
                    f"SlurmctldPidFile={run / 'slurmctld.pid'}",
                    f"SlurmdPidFile={run / 'slurmd.pid'}",
                    f"SlurmctldLogFile={log / 'slurmctld.log'}",
                    f"SlurmdLogFile={log / 'slurmd.log'}",
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "MpiDefault=none",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_Core",
                    "SchedulerType=sched/backfill",
                    "SchedulerParameters=sched_interval=2,bf_interval=2",
                    "MailProg=/bin/true",
                    "AccountingStorageType=accounting_storage/slurmdbd",
                    "AccountingStorageHost=127.0.0.1",
                    f"AccountingStoragePort={self.ports['dbd']}",
                    # For slurmdbd connections the munge socket goes here, not in AuthInfo.
                    f"AccountingStoragePass={self.path('run', 'munge.sock')}",
                    "JobAcctGatherType=jobacct_gather/none",
                    "JobCompType=jobcomp/none",
                    "SlurmdParameters=config_overrides",
                    "ReturnToService=2",
                    # Quick scancel (SIGTERM, then SIGKILL after 5 s) and quick retries.
                    "KillWait=5",
                    "MinJobAge=600",
                    "InactiveLimit=0",
                    "MessageTimeout=20",
                    "SlurmctldTimeout=60",
                    "SlurmdTimeout=120",
                    f"PlugStackConfig={self.path('etc', 'plugstack.conf')}",
                    self.node_line(),
                    f"PartitionName=debug Nodes={self.host} Default=YES MaxTime=INFINITE State=UP",
                    "",
                ]
            )
        )
        self.path("etc", "plugstack.conf").write_text("")
        self.path("etc", "cgroup.conf").write_text("CgroupPlugin=autodetect\n")
        dbd = self.path("etc", "slurmdbd.conf")
        dbd.write_text(
            "\n".join(
                [
                    "AuthType=auth/munge",
                    f"AuthInfo={munge}",
                    "DbdHost=localhost",
                    "DbdAddr=127.0.0.1",
                    f"DbdPort={self.ports['dbd']}",
                    "SlurmUser=root",
                    f"PidFile={run / 'slurmdbd.pid'}",
                    f"LogFile={log / 'slurmdbd.log'}",
                    "StorageType=accounting_storage/mysql",
                    "StorageHost=127.0.0.1",
                    f"StoragePort={self.ports['mysql']}",
                    "StorageUser=root",
                    "StorageLoc=slurm_acct_db",
                    "",
                ]
            )
        )
        dbd.chmod(0o600)

    # -- processes ---------------------------------------------------------------------------
    def spawn(self, name: str, argv: list[str]) -> None:
        """Start `argv` in the foreground (its own PID), output into log/<name>.out."""
        out = open(self.path("log", f"{name}.out"), "ab")  # noqa: SIM115 (closed with the daemon)
        self.procs[name] = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )
        out.close()

    def check_alive(self, name: str) -> bool:
        """True while daemon `name` runs; ClusterError with its log tail once it has died."""
        code = self.procs[name].poll()
        if code is not None:
            raise ClusterError(f"{name} exited with status {code}:\n{self.logs(name)}")
        return True

    def run(self, *argv: str, timeout_s: float = 60) -> subprocess.CompletedProcess:
        """A SLURM client command against this cluster."""
        return subprocess.run(
            list(argv), env=self.env, capture_output=True, text=True, timeout=timeout_s
        )

    def start(self, timeout_s: float = 120) -> SlurmCluster:
        """Install when needed, configure, start every daemon and wait for an idle node."""
        if missing_binaries():
            install_packages()
        if missing := missing_binaries():
            raise ClusterError(f"still missing after apt-get install: {', '.join(missing)}")
        self.write_config()
        munge_sock = self.path("run", "munge.sock")
        self.spawn(
            "munged",
            [
                "munged",
                "--foreground",
                "--force",
                f"--socket={munge_sock}",
                f"--key-file={self.path('munge', 'munge.key')}",
                f"--pid-file={self.path('run', 'munged.pid')}",
                f"--log-file={self.path('log', 'munged.log')}",
                f"--seed-file={self.path('munge', 'munged.seed')}",
            ],
        )
        datadir = self.path("mysql", "data")
        install_db = subprocess.run(
            [
                "mariadb-install-db",
                "--no-defaults",
                "--user=root",
                f"--datadir={datadir}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        if install_db.returncode != 0:
            raise ClusterError(f"mariadb-install-db failed:\n{install_db.stdout[-2000:]}")
        self.spawn(
            "mariadbd",
            [
                "mariadbd",
                "--no-defaults",
                "--user=root",
                f"--datadir={datadir}",
                f"--socket={self.path('mysql', 'mysql.sock')}",
                f"--pid-file={self.path('run', 'mariadbd.pid')}",
                f"--port={self.ports['mysql']}",
                "--bind-address=127.0.0.1",
                "--skip-grant-tables",
                "--skip-log-bin",
                "--innodb-buffer-pool-size=64M",
                "--innodb-log-file-size=48M",
            ],
        )
        wait_for("munged", lambda: self.check_alive("munged") and munge_sock.exists(), timeout_s)
        port = self.ports["mysql"]
        wait_for("MariaDB", lambda: self.check_alive("mariadbd") and port_open(port), timeout_s)
        # slurmdbd reads slurmdbd.conf next to $SLURM_CONF.
        self.spawn("slurmdbd", ["slurmdbd", "-D"])
        port = self.ports["dbd"]
        wait_for("slurmdbd", lambda: self.check_alive("slurmdbd") and port_open(port), timeout_s)
        added = self.run("sacctmgr", "-i", "add", "cluster", CLUSTER)
        if added.returncode != 0 and "already exists" not in added.stdout + added.stderr:
            raise ClusterError(f"sacctmgr add cluster failed: {added.stdout}{added.stderr}")
        self.spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)])
        port = self.ports["ctld"]
        wait_for("slurmctld", lambda: self.check_alive("slurmctld") and port_open(port), timeout_s)
        self.spawn("slurmd", ["slurmd", "-D", "-N", self.host, "-f", str(self.conf)])
        wait_for("an idle node", lambda: self.check_alive("slurmd") and self.node_idle(), timeout_s)
        return self

    def node_idle(self) -> bool:
        """Whether the node reports itself idle to slurmctld."""
        out = self.run("sinfo", "-h", "-N", "-o", "%T").stdout.split()
        return out == ["idle"]

    def queue_empty(self) -> bool:
        """No job pending, running or completing."""
        return self.run("squeue", "-h", "-o", "%i").stdout.strip() == ""

    def stop(self, timeout_s: float = 30) -> None:
        """Cancel every job, then stop every daemon this object started, newest first, by PID."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            self.run("scancel", "--full", "--user=root")
            with contextlib.suppress(ClusterError, subprocess.TimeoutExpired):
                wait_for("the queue to drain", self.queue_empty, timeout_s)
        for name in reversed(list(self.procs)):
            proc = self.procs[name]
            strays = descendants(proc.pid)  # job steps slurmd forked
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout_s)
            for pid, started in strays:
                kill_if_same(pid, started)
        self.procs.clear()

    def logs(self, *names: str, lines: int = 40) -> str:
        """The last `lines` of each daemon's log (all of them when no name is given)."""
        files = sorted(self.path("log").glob("*"))
        if names:
            files = [f for f in files if f.name.split(".")[0] in names]
        out = []
        for file in files:
            tail = file.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"==> {file.name} <==\n" + "\n".join(tail))
        return "\n".join(out)
