"""What every launcher shares around a sweep: the up-front check of the sweep folder, its one
record of the command (`multirun.yaml`), and one line per failed job at the end instead of the
first job's error ending the sweep, then where the sweep is and how to report it."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra.errors import OverrideParseException
from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig, OmegaConf, open_dict

from ichseg.atomic import atomic_write_text, file_lock
from ichseg.errors import IchsegError
from ichseg.jobs.records import MULTIRUN_FILE, read_job
from ichseg.paths import absolute


def job_dir(job_cfg: DictConfig) -> Path:
    """The folder a composed multirun job writes to: `<hydra.sweep.dir>/<hydra.sweep.subdir>`."""
    return Path(str(job_cfg.hydra.sweep.dir)) / str(job_cfg.hydra.sweep.subdir)


def check_sweep_dir(job_cfgs: Sequence[DictConfig], sweep_dir: str) -> None:
    """Raise, before anything is written, when a job folder of the sweep holds results of
    another configuration, or a checkpoint to resume from that another model saved: the whole
    sweep is refused."""
    from ichseg.jobs.config import config_clash, resume_checkpoint

    _check_one_job_per_folder(job_cfgs)
    clashes = []
    for cfg in job_cfgs:
        folder = job_dir(cfg)
        state = read_job(folder)
        resume_checkpoint(folder, state, cfg.model.module)
        if state is None:
            continue
        task_cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
        with open_dict(task_cfg):
            task_cfg.paths.output_dir = str(folder)
        clash = config_clash(state, task_cfg)
        if clash:
            clashes.append(f"{folder.name} ({clash})")
    if clashes:
        raise IchsegError(
            f"{sweep_dir}: holds results of another configuration: {', '.join(clashes)}; "
            "nothing was changed; choose another hydra.sweep.dir"
        )


def _check_one_job_per_folder(job_cfgs: Sequence[DictConfig]) -> None:
    """Raise when two jobs of the sweep would write one folder (a value given twice, or a swept
    key the folder name leaves out): the second would find the first's results as its own."""
    first: dict[Path, str] = {}
    for cfg in job_cfgs:
        folder = job_dir(cfg)
        job = " ".join(_command(cfg)) or "no overrides"
        if folder in first:
            raise IchsegError(
                f"two jobs of this sweep ({first[folder]}; {job}) would both write {folder}; "
                "nothing was changed: give each value once, and sweep a setting the folder "
                "name (hydra.sweep.subdir) leaves out into a hydra.sweep.dir of its own"
            )
        first[folder] = job


def _command(config: DictConfig) -> list[str]:
    """The sweep's command-line overrides, in a canonical order."""
    return sorted(str(o) for o in OmegaConf.select(config, "hydra.overrides.task") or [])


def _values(command: list[str]) -> dict[str, list]:
    """Every value each override key takes (a sweep's values, or its one value)."""
    parsed = OverridesParser.create().parse_overrides(command)
    return {
        o.get_key_element(): list(o.sweep_iterator()) if o.is_sweep_override() else [o.value()]
        for o in parsed
    }


def _jobs_among(command: list[str], recorded: list[str]) -> bool:
    """Whether every job of `command` is one of `recorded`'s: the same keys, each taking only
    values the recorded command gives it (`fold=0,1` of a sweep of `fold=0..9`)."""
    try:
        now, earlier = _values(command), _values(recorded)
    except OverrideParseException:
        return False
    return now.keys() == earlier.keys() and all(
        all(value in earlier[key] for value in values) for key, values in now.items()
    )


def record_sweep(config: DictConfig, sweep_dir: Path) -> None:
    """Write the sweep's `multirun.yaml` (what the report expects of it), keep the one there when
    this command runs some of its jobs again, and raise when the folder holds the record of a
    command this one is not part of: one sweep folder is one command. Checked and written under
    a lock, so two sweeps started at once cannot both pass."""
    path = sweep_dir / MULTIRUN_FILE
    now = _command(config)
    with file_lock(sweep_dir / f".{MULTIRUN_FILE}.lock"):
        if path.is_file():
            try:
                earlier = _command(OmegaConf.load(path))
            except (OSError, ValueError) as err:
                raise IchsegError(f"{path}: cannot read the sweep's record ({err})") from None
            if _jobs_among(now, earlier):
                return
            raise IchsegError(
                f"hydra.sweep.dir {sweep_dir}: holds the sweep of another command "
                f"({MULTIRUN_FILE}: {' '.join(earlier) or 'no overrides'}; this one: "
                f"{' '.join(now) or 'no overrides'}); nothing was changed; run that command "
                "(or some of its jobs) again to finish it, or choose another hydra.sweep.dir"
            )
        atomic_write_text(path, OmegaConf.to_yaml(config))


def why_failed(ret: JobReturn) -> str:
    """One line: the job's own error message (the exception's first line)."""
    exc = ret._return_value
    first = str(exc).splitlines()[0] if str(exc) else ""
    name = type(exc).__name__
    return first if name == "IchsegError" else (f"{name}: {first}" if first else name)


def failure_report(results: Sequence[JobReturn], sweep_dir: str) -> str:
    """One line per failed job and the command to finish the sweep ('' when none failed)."""
    failed = [r for r in results if r.status == JobStatus.FAILED]
    if not failed:
        return ""
    lines = [f"  {' '.join(filter_overrides(r.overrides or []))}: {why_failed(r)}" for r in failed]
    others = len(results) - len(failed)
    finish = (
        (f"the other {others} finished; " if others else "")
        + f"fix the cause, then run the same command with hydra.sweep.dir={absolute(sweep_dir)} "
        "to finish the sweep (finished jobs are skipped)"
    )
    head = f"{len(failed)} of {len(results)} jobs failed:"
    return "\n".join([head, *lines, finish])


class SweepEnd(HydraCallback):
    """At the end of a multirun, say where the sweep is and how to report it: its absolute
    path, since `make report` runs in the project folder."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep = absolute(config.hydra.sweep.dir)
        logging.getLogger("ichseg").info("sweep in %s; report: make report SWEEP=%s", sweep, sweep)
