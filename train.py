"""Train one architecture on one fold; with -m, sweep them.

python train.py                                   # D-Unet, fold 0, synthetic data
python train.py -m model=unet,dunet fold=0..9     # the paper's 20-job comparison
python train.py -m experiment=demo model=unet,dunet fold=0..9
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent
os.environ.setdefault("ICHSEG_ROOT", str(ROOT))
# W&B's banners and run summaries drown the job's own lines; WANDB_SILENT=false brings them back.
os.environ.setdefault("WANDB_SILENT", "true")

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig  # noqa: E402
from omegaconf.errors import MissingMandatoryValue  # noqa: E402

from ichseg.config import register_resolvers  # noqa: E402
from ichseg.config_schema import validate  # noqa: E402
from ichseg.errors import IchsegError  # noqa: E402
from ichseg.jobs.folder import JobBusy, discard_refused_run, holds_only_hydra_files  # noqa: E402
from ichseg.launch.overrides import check_overrides, expand_ranges  # noqa: E402

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """One Hydra job: train, record checkpoints, return the last validation Dice (paper)."""
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    run_dir = Path(hydra_cfg.runtime.output_dir)
    fresh = not multirun and holds_only_hydra_files(run_dir)
    try:
        # Checked before Hydra made any folder too (by the sweeper, or a run's callback); again
        # here, at about 0.1 s, for a job another process launched (a SLURM array task).
        validate(cfg)
        # Lightning takes seconds to load: a refused config answers without it.
        from ichseg.training.task import run_job

        return run_job(cfg)
    except JobBusy as exc:
        if multirun:  # the rest of the sweep goes on; the job is the other process's
            print(f"train.py: {run_dir.name} skipped: {exc}", file=sys.stderr)
            return None
        print(f"train.py: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except (IchsegError, MissingMandatoryValue) as exc:
        print(f"train.py: error: {exc}", file=sys.stderr)
        if multirun:
            raise  # the sweeper records the job as failed, runs the rest, and lists it at the end
        if fresh:
            discard_refused_run(run_dir)
        sys.exit(2)
    except Exception:
        if multirun:
            traceback.print_exc()  # the sweep's last lines name the job; here is its traceback
        raise


if __name__ == "__main__":
    try:
        sys.argv = [sys.argv[0], *expand_ranges(sys.argv[1:])]
        check_overrides(sys.argv[1:], ROOT / "conf")
    except IchsegError as exc:
        print(f"train.py: error: {exc}", file=sys.stderr)
        sys.exit(2)
    main()
