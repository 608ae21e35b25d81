"""Splits: sizes, disjointness, stratification, patient grouping, determinism, bad input."""

import numpy as np
import pytest

from ichseg.data.splits import make_splits
from ichseg.errors import IchsegError


def _balanced_set(n_patients: int = 40, seed: int = 1):
    """Ids, labels and patients shaped like the balanced set: ICH runs in some patients."""
    rng = np.random.default_rng(seed)
    ids, ich, pats = [], [], []
    for p in range(49, 49 + n_patients):
        n_slices = int(rng.integers(4, 12))
        n_ich = int(rng.integers(2, 9)) if p % 2 else 0
        for s in range(1, n_slices + n_ich + 1):
            ids.append(f"{p:03d}_{s:02d}")
            ich.append(s > n_slices)
            pats.append(p)
    return ids, np.array(ich), np.array(pats)


def _check_partition(split, ids):
    test = set(split["test"])
    vals = [set(f["val"]) for f in split["folds"]]
    for fold in split["folds"]:
        train, val = set(fold["train"]), set(fold["val"])
        assert not train & val and not train & test and not val & test
        assert train | val | test == set(ids)
        assert fold["train"] == sorted(fold["train"]) and fold["val"] == sorted(fold["val"])
    seen = [i for v in vals for i in v]
    assert sorted(seen) == sorted(set(ids) - test)  # each non-test id in exactly one val fold
    assert split["test"] == sorted(split["test"])


def test_slice_mode_sizes_stratification_and_partition():
    ids = [f"{p:03d}_{s:02d}" for p in range(49, 79) for s in range(1, 22)]  # 630 slices
    y = np.zeros(len(ids), dtype=bool)
    y[::2] = True  # 315 / 315
    pats = np.array([int(i[:3]) for i in ids])
    split = make_splits(ids, y, pats, "slice", seed=0)
    assert split["mode"] == "slice" and split["seed"] == 0 and len(split["folds"]) == 10
    label = dict(zip(ids, y, strict=True))
    test_ich = sum(label[i] for i in split["test"])
    assert test_ich == 32 and len(split["test"]) - test_ich == 32  # round(0.1 * 315) each
    _check_partition(split, ids)
    for cls in (True, False):
        counts = [sum(label[i] == cls for i in f["val"]) for f in split["folds"]]
        assert max(counts) - min(counts) <= 1


def test_patient_mode_keeps_patients_together():
    ids, y, pats = _balanced_set()
    split = make_splits(ids, y, pats, "patient", seed=3)
    _check_partition(split, ids)
    patient = dict(zip(ids, pats, strict=True))
    test_p = {patient[i] for i in split["test"]}
    val_p = [{patient[i] for i in f["val"]} for f in split["folds"]]
    for fold, vp in zip(split["folds"], val_p, strict=True):
        assert not {patient[i] for i in fold["train"]} & (vp | test_p)
        assert not vp & test_p
    for a in range(len(val_p)):
        for b in range(a + 1, len(val_p)):
            assert not val_p[a] & val_p[b]
    label = dict(zip(ids, y, strict=True))
    for cls in (True, False):
        frac = sum(label[i] == cls for i in split["test"]) / int((y == cls).sum())
        assert 0.03 < frac < 0.2  # whole patients: about a tenth of each class


def test_same_seed_same_split_other_seed_differs():
    ids, y, pats = _balanced_set()
    for mode in ("slice", "patient"):
        a = make_splits(ids, y, pats, mode, seed=7, n_folds=5)
        assert a == make_splits(ids, y, pats, mode, seed=7, n_folds=5)
        assert a != make_splits(ids, y, pats, mode, seed=8, n_folds=5)


def test_bad_inputs_raise_one_line_errors():
    ids, y, pats = _balanced_set()
    with pytest.raises(
        IchsegError, match=r"^data\.split='bogus' is not allowed: expected one of slice, patient$"
    ):
        make_splits(ids, y, pats, "bogus", seed=0)
    with pytest.raises(IchsegError, match=r"^data\.n_folds=1 is not allowed: .* >= 2$"):
        make_splits(ids, y, pats, "slice", seed=0, n_folds=1)
    with pytest.raises(IchsegError, match=r"^data\.test_fraction=1\.0 is not allowed: "):
        make_splits(ids, y, pats, "slice", seed=0, test_fraction=1.0)
    few = ids[:14]
    with pytest.raises(IchsegError, match="hemorrhage"):
        make_splits(few, np.arange(14) < 5, np.arange(14), "slice", seed=0, n_folds=10)
    with pytest.raises(IchsegError, match="patients"):
        make_splits(ids, y, np.full(len(ids), 49), "patient", seed=0)
    with pytest.raises(IchsegError, match="length"):
        make_splits(ids, y[:-1], pats, "slice", seed=0)
