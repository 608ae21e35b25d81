"""Score each architecture's selected checkpoint on the held-out test split.

Every fold's model at the selected epoch predicts the test slices (the test split is shared by
all folds). Two predictions are scored and both reported, each labelled:
- ensemble: the fold models' sigmoid probabilities averaged, then thresholded;
- best fold: the single fold model with the best validation score at that epoch (mean of
  validation IoU and Dice under the selection's protocol), the paper's "selected model".
Scores use `ichseg.metrics.ProtocolAccumulator` over the test rows' probabilities in the data
module's evaluation batches (the paper protocol depends on batching), overall and per hemorrhage
subtype; `perimage` is the authors' own test scoring (Keras `evaluate` with batch size 1).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from ichseg.data.datamodule import ICHDataModule
from ichseg.data.release import SUBTYPES
from ichseg.errors import IchsegError
from ichseg.metrics import ProtocolAccumulator
from ichseg.report.collect import Job, Sweep
from ichseg.report.heldout import TestExample, TestResult
from ichseg.report.selection import Choice, Selection
from ichseg.report.table import protocol
from ichseg.runtime import pick_device
from ichseg.training.module import SegmentationModule

NO_HEMORRHAGE = "No hemorrhage"


def evaluate_test(
    sweep: Sweep, selection: Selection, n_examples: int = 6, device: str | None = None
) -> list[TestResult]:
    """Ensemble and best-fold test results for every architecture in `selection`."""
    device = str(pick_device(device))
    modules: dict[str, ICHDataModule] = {}
    results = []
    for choice in selection.choices.values():
        results += _evaluate_model(sweep, selection, choice, n_examples, device, modules)
    return results


def checkpoints_at(sweep: Sweep, model: str, epoch: int) -> list[tuple[Job, Path]]:
    """(job, checkpoint file) of every fold with a record at `epoch` whose checkpoint exists."""
    found = []
    for job in sweep.jobs_of(model):
        record = job.record(epoch)
        if record is None or not record.get("checkpoint") or job.dir is None:
            continue
        path = job.dir / record["checkpoint"]
        if path.is_file():
            found.append((job, path))
    if not found:
        raise IchsegError(
            f"{sweep.root}: no checkpoint file of {model} at epoch {epoch} exists "
            f"(expected {model}-fold<k>/checkpoints/epoch={epoch:04d}.ckpt); cannot score the "
            "test set"
        )
    return found


def _data_module(job: Job, cache: dict[str, ICHDataModule]) -> ICHDataModule:
    """The job's data module, set up; one per prepared cache, checked against the job's cache."""
    if "data" not in job.config:
        raise IchsegError(
            f"{job.source}: config key 'data' is missing; cannot rebuild the test set"
        )
    # The test split is the same for every fold: one data module serves all of them.
    data = {k: v for k, v in job.config["data"].items() if k != "fold"}
    key = repr(sorted(data.items()))
    if key not in cache:
        dm = instantiate(OmegaConf.create({**data, "fold": 0}))
        dm.setup("test")
        cache[key] = dm
    dm = cache[key]
    trained_on = job.state.get("cache_dir")
    # Cache folders are named by a hash of the release and settings: the same name means the
    # same data, even when the project folder has moved since training.
    if trained_on and Path(trained_on).name != dm.cache_dir.name:
        raise IchsegError(
            f"{job.name}: trained on prepared cache {trained_on}, but its data config now "
            f"prepares {dm.cache_dir}; the test split may differ"
        )
    return dm


@torch.no_grad()
def _probabilities(
    module: SegmentationModule, images: torch.Tensor, batch: int, device: str
) -> torch.Tensor:
    """Sigmoid probabilities (N, 1, S, S) on the CPU, in eval mode."""
    module.eval().to(device)
    out = [torch.sigmoid(module(x.to(device)).float()).cpu() for x in images.split(batch)]
    return torch.cat(out)


def _scores(
    prob: torch.Tensor, target: torch.Tensor, batch: int, threshold: float, min_area: int
) -> dict[str, float | None]:
    """Every protocol over the slices given, in evaluation batches; None where undefined."""
    if len(prob) == 0:
        return {}
    acc = ProtocolAccumulator(min_area=min_area, threshold=threshold)
    for p, t in zip(prob.split(batch), target.split(batch), strict=True):
        acc.update(p, t)
    return {k: (v if math.isfinite(v) else None) for k, v in acc.compute().items()}


def _best_fold(jobs: list[Job], epoch: int, protocol_name: str) -> Job:
    """The job whose validation (IoU + Dice) / 2 at `epoch` is highest; lower fold on ties."""
    p = protocol(protocol_name)

    def score(job: Job) -> float:
        val = job.record(epoch)["val"]
        values = [val.get(p.iou), val.get(p.dice)]
        return -math.inf if None in values else sum(values) / 2

    return max(jobs, key=lambda j: (score(j), -j.fold))


def _examples(subtypes: np.ndarray, n: int) -> list[int]:
    """Up to `n` test rows: hemorrhage slices, one subtype after another, and a third (at least
    one) clean slices, where only a false positive would paint anything."""
    clean = list(np.flatnonzero(~subtypes.any(axis=1)))[: max(1, n // 3)] if n else []
    picked: list[int] = []
    queues = [list(np.flatnonzero(subtypes[:, i])) for i in range(subtypes.shape[1])]
    while len(picked) < n - len(clean) and any(queues):
        for queue in queues:
            while queue and queue[0] in picked:
                queue.pop(0)
            if queue and len(picked) < n - len(clean):
                picked.append(int(queue.pop(0)))
    return picked + [int(i) for i in clean]


def _evaluate_model(
    sweep: Sweep,
    selection: Selection,
    choice: Choice,
    n_examples: int,
    device: str,
    modules: dict[str, ICHDataModule],
) -> list[TestResult]:
    """Ensemble and best-fold results of one architecture at its selected epoch."""
    found = checkpoints_at(sweep, choice.model, choice.epoch)
    dm = _data_module(found[0][0], modules)
    rows = dm.test_rows
    images, target = dm.images[rows], dm.masks[rows] > 0.5
    subtypes = dm.row_subtypes(rows)
    ids = dm.row_ids(rows)
    best = _best_fold([job for job, _ in found], choice.epoch, selection.protocol)
    total = torch.zeros_like(images)
    best_prob = None
    for job, path in found:
        if _data_module(job, modules) is not dm:
            raise IchsegError(f"{job.name}: its data config differs from {found[0][0].name}'s")
        # Scoring a few batches does not repay compiling a model trained with compile=true.
        module = SegmentationModule.load_from_checkpoint(path, map_location="cpu", compile=False)
        prob = _probabilities(module, images, dm.eval_batch_size, device)
        total += prob
        if job is best:
            best_prob = prob
    hp = module.hparams  # threshold and detection area: shared by the folds
    folds = ", ".join(str(job.fold) for job, _ in found)
    predictions = {
        f"ensemble of {len(found)} folds ({folds})": total / len(found),
        f"best fold ({best.fold})": best_prob,
    }
    subsets = {name: subtypes[:, i].astype(bool) for i, name in enumerate(SUBTYPES)}
    subsets[NO_HEMORRHAGE] = ~subtypes.any(axis=1)
    chosen = _examples(subtypes, n_examples)
    results = []
    for scoring, prob in predictions.items():
        pred = prob > hp.threshold

        def score(keep: np.ndarray, prob: torch.Tensor = prob) -> dict[str, float | None]:
            keep = torch.as_tensor(keep)
            return _scores(
                prob[keep], target[keep], dm.eval_batch_size, hp.threshold, hp.min_detection_area
            )

        results.append(
            TestResult(
                model=choice.model,
                epoch=choice.epoch,
                scoring=scoring,
                n_slices=len(rows),
                overall=score(np.ones(len(rows), dtype=bool)),
                by_subtype={name: score(keep) for name, keep in subsets.items()},
                subtype_counts={name: int(keep.sum()) for name, keep in subsets.items()},
                examples=[
                    TestExample(
                        slice_id=ids[i],
                        image=images[i, 0].numpy(),
                        mask=target[i, 0].numpy(),
                        prediction=pred[i, 0].numpy(),
                        subtypes=tuple(
                            s for s, flag in zip(SUBTYPES, subtypes[i], strict=True) if flag
                        ),
                    )
                    for i in chosen
                ],
            )
        )
    return results
