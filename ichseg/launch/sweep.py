"""What every launcher shares around a sweep: the up-front check of the sweep folder, and one
line per failed job at the end instead of the first job's error ending the sweep."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from omegaconf import DictConfig, OmegaConf, open_dict

from ichseg.errors import IchsegError
from ichseg.records import read_job


def job_dir(job_cfg: DictConfig) -> Path:
    """The folder a composed multirun job writes to: `<hydra.sweep.dir>/<hydra.sweep.subdir>`."""
    return Path(str(job_cfg.hydra.sweep.dir)) / str(job_cfg.hydra.sweep.subdir)


def check_sweep_dir(job_cfgs: Sequence[DictConfig], sweep_dir: str) -> None:
    """Raise, before anything is written, when a job folder of the sweep holds results of
    another configuration, or a checkpoint to resume from that another model saved: the whole
    sweep is refused."""
    from ichseg.training.job_state import config_clash, resume_checkpoint

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
        + f"fix the cause, then run the same command with hydra.sweep.dir={sweep_dir} "
        "to finish the sweep (finished jobs are skipped)"
    )
    head = f"{len(failed)} of {len(results)} jobs failed:"
    return "\n".join([head, *lines, finish])
