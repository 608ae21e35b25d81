"""Each architecture's selected checkpoints scored on the held-out test slices, and the results
as the report consumes them.

Every fold's model at the selected epoch predicts the test slices of the prepared cache (the test
split is shared by all folds) through `ichseg.inference.ensemble.Ensemble`, in fp32. Two
predictions are scored and both reported, each labelled:
- ensemble: the fold models' sigmoid probabilities averaged, then thresholded;
- best fold: the single fold model with the best validation score at that epoch (mean of
  validation IoU and Dice under the selection's protocol), the paper's "selected model".
Scores use `ichseg.metrics.ProtocolAccumulator` over the test rows' probabilities in the data
module's evaluation batches (the paper protocol depends on batching), overall and per hemorrhage
subtype; `perimage` is the authors' own test scoring (Keras `evaluate` with batch size 1).

`ichseg.report.compute.score_heldout` calls `evaluate_slices`; `build_report` takes the
`SliceResult`s as they are, so the report can be built, and tested, without a trained model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from ichseg.checkpoint import load_checkpoint
from ichseg.data.datamodule import ICHDataModule
from ichseg.data.release import SUBTYPES
from ichseg.errors import IchsegError
from ichseg.inference.ensemble import Ensemble
from ichseg.metrics import ProtocolAccumulator, stage_keys
from ichseg.report.render import fmt
from ichseg.report.selection import Choice, Selection
from ichseg.report.table import table1_columns
from ichseg.runtime import pick_device
from ichseg.sweeps.model import Job, Sweep

NO_HEMORRHAGE = "No hemorrhage"
# Every test-stage protocol, the authors' per-image scoring (`perimage`) beside the others.
METRIC_COLUMNS = stage_keys("test")


@dataclass(frozen=True)
class SliceExample:
    """One test slice to draw: the CT image, its ground truth and the predicted mask."""

    slice_id: str
    image: np.ndarray  # (S, S) float in [0, 1] or uint8
    mask: np.ndarray  # (S, S) bool
    prediction: np.ndarray  # (S, S) bool
    subtypes: tuple[str, ...]  # hemorrhage subtypes of the slice; () for no hemorrhage

    @property
    def caption(self) -> str:
        """What the slice shows by its truth mask, the one the cache trains and scores on: its
        subtypes, "ICH, no subtype" for a bleed labelled without one, or "no ICH"."""
        if not self.mask.any():
            return "no ICH"
        return ", ".join(self.subtypes) or "ICH, no subtype"


@dataclass
class SliceResult:
    """Scores of one architecture's selected checkpoint(s) on the held-out test slices."""

    model: str
    name: str  # how the report names the model (`Sweep.names`)
    epoch: int
    scoring: str  # how the prediction was made: "ensemble of 10 folds (0, ..., 9)", "best fold (3)"
    n_slices: int
    overall: dict[str, float | None]  # metric key (METRIC_COLUMNS) -> value
    by_subtype: dict[str, dict[str, float | None]]  # subtype -> metric key -> value
    subtype_counts: dict[str, int]  # subtype -> number of test slices carrying it
    examples: list[SliceExample] = field(default_factory=list)


def slices_markdown(results: list[SliceResult]) -> str:
    """All test results as one Markdown table: overall and per-subtype rows."""
    head = "| Architecture | Epoch | Scoring | Subset | Slices | " + " | ".join(METRIC_COLUMNS)
    lines = [head + " |", "|" + "---|" * (5 + len(METRIC_COLUMNS))]
    for r in results:
        subsets = [("all", r.n_slices, r.overall)]
        subsets += [(s, r.subtype_counts.get(s, 0), m) for s, m in r.by_subtype.items()]
        for name, count, metrics in subsets:
            cells = [r.name, str(r.epoch), r.scoring, name, str(count)]
            cells += [fmt(_value(metrics.get(k))) for k in METRIC_COLUMNS]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _value(v: float | None) -> float:
    """None (undefined metric, e.g. specificity on a subset without negatives) as NaN."""
    return float("nan") if v is None else float(v)


def evaluate_slices(
    sweep: Sweep, selection: Selection, n_examples: int = 6, device: str | None = None
) -> list[SliceResult]:
    """Ensemble and best-fold test results for every architecture in `selection`."""
    target = pick_device(device)
    modules: dict[str, ICHDataModule] = {}
    results = []
    for choice in selection.choices.values():
        if has_test_predictions(sweep, choice.model):
            results += _evaluate_model(sweep, selection, choice, n_examples, target, modules)
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


def _probabilities(ensemble: Ensemble, images: torch.Tensor) -> torch.Tensor:
    """The ensemble's mean probabilities (N, 1, S, S) of `images`, on the CPU."""
    return torch.cat([prob.cpu() for prob in ensemble.probabilities(images)])


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
    p = table1_columns(protocol_name)

    def score(job: Job) -> float:
        val = job.record(epoch)["val"]
        values = [val.get(p.iou), val.get(p.dice)]
        return -math.inf if None in values else sum(values) / 2

    return max(jobs, key=lambda j: (score(j), -j.fold))


def _examples(subtypes: np.ndarray, n: int) -> list[int]:
    """Up to `n` test rows: hemorrhage slices, one column of `subtypes` (a subtype, or bleeds
    labelled without one) after another, and a third (at least one) clean slices, rows with no
    flag, where only a false positive would paint anything."""
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


def _predictions(
    sweep: Sweep,
    selection: Selection,
    choice: Choice,
    dm: ICHDataModule,
    images: torch.Tensor,
    device: torch.device,
    modules: dict[str, ICHDataModule],
) -> tuple[list[Job], Job, torch.Tensor, torch.Tensor, float, int]:
    """The folds scored, the best one, the ensemble's and the best fold's test probabilities,
    the threshold and the detection area. nnU-Net's probabilities are its imported predictions
    (averaged here the same way); the networks' come from their checkpoints."""
    imported = [
        (job, torch.from_numpy(np.load(job.imported_test_file, allow_pickle=False)).unsqueeze(1))
        for job in sweep.jobs_of(choice.model)
        if job.record(choice.epoch) is not None and job.imported_test_file is not None
    ]
    if imported:
        jobs = [job for job, _ in imported]
        best = _best_fold(jobs, choice.epoch, selection.protocol)
        mean = torch.stack([prob for _, prob in imported]).mean(dim=0)
        single = next(prob for job, prob in imported if job is best)
        threshold = float(jobs[0].get("model.module.threshold"))
        min_area = int(jobs[0].get("model.module.min_detection_area"))
        return jobs, best, mean, single, threshold, min_area
    found = checkpoints_at(sweep, choice.model, choice.epoch)
    best = _best_fold([job for job, _ in found], choice.epoch, selection.protocol)
    for job, _ in found:
        if _data_module(job, modules) is not dm:
            raise IchsegError(f"{job.name}: its data config differs from {found[0][0].name}'s")
    checkpoints = [load_checkpoint(path) for _, path in found]
    batch = dm.eval_batch_size
    ensemble = Ensemble(checkpoints, device, batch_size=batch, precision="fp32")
    best_checkpoint = next(c for (job, _), c in zip(found, checkpoints, strict=True) if job is best)
    single = Ensemble([best_checkpoint], device, batch_size=batch, precision="fp32")
    # Threshold and detection area: shared by the folds (the ensemble checks the threshold).
    threshold, min_area = ensemble.threshold, checkpoints[0].min_detection_area
    jobs = [job for job, _ in found]
    return (
        jobs,
        best,
        _probabilities(ensemble, images),
        _probabilities(single, images),
        threshold,
        min_area,
    )


def has_test_predictions(sweep: Sweep, model: str) -> bool:
    """Whether `model`'s test split can be scored: checkpoints, or imported predictions."""
    jobs = sweep.jobs_of(model)
    if any(job.imported_test_file is not None for job in jobs):
        return True
    return not any(job.imported for job in jobs)


def _evaluate_model(
    sweep: Sweep,
    selection: Selection,
    choice: Choice,
    n_examples: int,
    device: torch.device,
    modules: dict[str, ICHDataModule],
) -> list[SliceResult]:
    """Ensemble and best-fold results of one architecture at its selected epoch."""
    jobs = [j for j in sweep.jobs_of(choice.model) if j.record(choice.epoch) is not None]
    dm = _data_module(jobs[0], modules)
    rows = dm.test_rows
    images, target = dm.images[rows], dm.masks[rows] > 0.5
    subtypes = dm.row_subtypes(rows)
    ids = dm.row_ids(rows)
    batch = dm.eval_batch_size
    scored, best, mean, single, threshold, min_area = _predictions(
        sweep, selection, choice, dm, images, device, modules
    )
    folds = ", ".join(str(job.fold) for job in scored)
    predictions = {
        f"ensemble of {len(scored)} folds ({folds})": mean,
        f"best fold ({best.fold})": single,
    }
    # A slice shows hemorrhage when its mask holds a bleed pixel (prepare's rule), with or
    # without a subtype label (INSTANCE 2022 has none).
    bleeding = target.flatten(1).any(dim=1).numpy()
    subsets = {name: subtypes[:, i].astype(bool) for i, name in enumerate(SUBTYPES)}
    subsets[NO_HEMORRHAGE] = ~bleeding
    no_subtype = bleeding & ~subtypes.any(axis=1)
    chosen = _examples(np.column_stack([subtypes.astype(bool), no_subtype]), n_examples)
    results = []
    for scoring, prob in predictions.items():
        pred = prob > threshold

        def score(keep: np.ndarray, prob: torch.Tensor = prob) -> dict[str, float | None]:
            keep = torch.as_tensor(keep)
            return _scores(prob[keep], target[keep], batch, threshold, min_area)

        results.append(
            SliceResult(
                model=choice.model,
                name=sweep.names.get(choice.model, choice.model),
                epoch=choice.epoch,
                scoring=scoring,
                n_slices=len(rows),
                overall=score(np.ones(len(rows), dtype=bool)),
                by_subtype={name: score(keep) for name, keep in subsets.items()},
                subtype_counts={name: int(keep.sum()) for name, keep in subsets.items()},
                examples=[
                    SliceExample(
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
