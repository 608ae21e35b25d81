"""Test hold-out and cross-validation folds over the balanced slice set, written to splits.json.

Two modes:
- `slice` (the D-Unet paper): slices are split independently, so one patient's slices can sit in
  train, validation and test at once (leakage the paper's numbers benefit from);
- `patient`: whole patients go to one side, so no patient is seen in training and scoring.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from ichseg.config_schema import check_section
from ichseg.errors import IchsegError


def make_splits(
    ids: list[str],
    has_ich: np.ndarray,
    patients: np.ndarray,
    mode: str,
    seed: int,
    n_folds: int = 10,
    test_fraction: float = 0.1,
) -> dict:
    """Hold out a stratified test set, then cut `n_folds` stratified train/val folds of the rest."""
    y, groups = _validate(ids, has_ich, patients, mode, n_folds, test_fraction)
    if mode == "slice":
        test, rest = _slice_test(y, seed, test_fraction)
        _require_per_class(y[rest], n_folds, "slices", "outside the test set")
        kfold = StratifiedKFold(n_splits=int(n_folds), shuffle=True, random_state=seed)
        cuts = kfold.split(np.zeros(len(rest)), y[rest])
    else:
        test, rest = _patient_test(y, groups, seed, test_fraction)
        _require_per_class(y[rest], n_folds, "patients", "outside the test set", groups[rest])
        kfold = StratifiedGroupKFold(n_splits=int(n_folds), shuffle=True, random_state=seed)
        cuts = kfold.split(np.zeros(len(rest)), y[rest], groups[rest])
    names = np.asarray(ids, dtype=object)
    folds = [{"train": sorted(names[rest[tr]]), "val": sorted(names[rest[va]])} for tr, va in cuts]
    return {
        "mode": mode,
        "seed": int(seed),
        "n_folds": int(n_folds),
        "test_fraction": float(test_fraction),
        "test": sorted(names[test]),
        "folds": folds,
    }


def _validate(
    ids: list[str],
    has_ich: np.ndarray,
    patients: np.ndarray,
    mode: str,
    n_folds: int,
    test_fraction: float,
) -> tuple[np.ndarray, np.ndarray]:
    check_section("data", {"split": mode, "n_folds": n_folds, "test_fraction": test_fraction})
    y = np.asarray(has_ich, dtype=bool)
    groups = np.asarray(patients)
    if y.shape != (len(ids),) or groups.shape != (len(ids),):
        raise IchsegError(
            f"make_splits: expected has_ich and patients of length {len(ids)} (one per id), "
            f"found shapes {y.shape} and {groups.shape}"
        )
    if len(set(ids)) != len(ids):
        raise IchsegError("make_splits: expected unique slice ids, found duplicates")
    return y, groups


def _require_per_class(
    y: np.ndarray, need: int, unit: str, where: str, groups: np.ndarray | None = None
) -> None:
    """Every class needs `need` slices (or patients) so each fold's validation set holds one."""
    for label, name in ((True, "hemorrhage"), (False, "clean")):
        members = y == label
        found = len(np.unique(groups[members])) if groups is not None else int(members.sum())
        if found < need:
            raise IchsegError(
                f"split: expected at least {need} {unit} with {name} slices {where} "
                f"(one per fold, n_folds={need}), found {found}"
            )


def _slice_test(y: np.ndarray, seed: int, test_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Draw round(test_fraction * n_c) slices of each class c at random."""
    rng = np.random.default_rng(seed)
    test = []
    for label in (False, True):
        members = np.flatnonzero(y == label)
        # floor(x + 0.5) rather than round(): Python rounds halves to even.
        n_test = math.floor(test_fraction * len(members) + 0.5)
        if len(members) and n_test == 0:
            n_test = 1
        test.append(rng.choice(members, size=n_test, replace=False))
    test_idx = np.sort(np.concatenate(test))
    rest = np.setdiff1d(np.arange(len(y)), test_idx)
    return test_idx, rest


def _patient_test(
    y: np.ndarray, groups: np.ndarray, seed: int, test_fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """Hold out one of round(1 / test_fraction) stratified patient groups as the test set."""
    n_splits = max(2, round(1 / test_fraction))
    n_patients = len(np.unique(groups))
    if n_patients < n_splits:
        raise IchsegError(
            f"split: expected at least {n_splits} patients to hold out test_fraction="
            f"{test_fraction} by patient, found {n_patients}"
        )
    kfold = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    rest, test = next(kfold.split(np.zeros(len(y)), y, groups))
    return np.sort(test), np.sort(rest)
