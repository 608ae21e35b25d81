"""`ichseg evaluate --source --root` never scores the release the checkpoints were trained on:
the folder itself, a copy, the same volumes in another layout or among other volumes are refused
in one line before anything is written; a cache of an earlier ichseg or a checkpoint whose cache
is unknown is said once."""

from __future__ import annotations

import json
import shutil

import pytest

from ichseg.cli import main
from ichseg.data.phantom import write_phantom
from ichseg.data.prepare import PrepareConfig, prepare
from ichseg.data.sources import BHSD
from tests.helpers.checkpoints import PRE, passthrough_module, save_checkpoint, split_of

PATIENTS = 6


def _job(folder, cache, job_state=None, config=None):
    """A job folder as training leaves it: its checkpoint and job.json naming its cache."""
    ckpt = save_checkpoint(
        passthrough_module(), folder / "checkpoints" / "epoch=0002.ckpt", PRE, split=split_of(cache)
    )
    state = {"model": "unet", "fold": 0, "status": "done", "cache_dir": str(cache)}
    (folder / "job.json").write_text(json.dumps(job_state or state))
    if config is not None:
        (folder / "config.yaml").write_text(json.dumps(config))
    return ckpt


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A BHSD-layout release, the cache prepared from it and a checkpoint of a job trained on it."""
    root = tmp_path_factory.mktemp("overlap")
    release = write_phantom(root / "train", patients=PATIENTS, size=32, seed=2, layout="bhsd")
    cfg = PrepareConfig(size=32, n_folds=2, test_fraction=0.2)
    cache = prepare(BHSD(str(release)), root / "cache", cfg)
    return release, cache, _job(root / "sweep" / "unet-fold0", cache)


def _evaluate(ckpts, source, folder, out, capsys):
    ckpts = ckpts if isinstance(ckpts, list) else [ckpts]
    argv = ["evaluate", *ckpts, "--source", source, "--root", folder, "-o", out]
    code = main([str(a) for a in [*argv, "--precision", "fp32"]])
    _, err = capsys.readouterr()
    return code, err.strip()


def _refused(code: int, err: str, out) -> None:
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "an external validation set must hold none of its volumes" in err, err
    assert not out.exists()


def _cases(folder) -> list[str]:
    """The case names of a BHSD-layout folder, read straight from its file names."""
    scans = sorted((folder / "label_192" / "images").iterdir())
    return [p.name.removesuffix(".nii.gz") for p in scans]


@pytest.mark.reliability(
    case="external validation on the training release",
    did="ichseg evaluate CKPT --source bhsd --root <the release CKPT's cache was prepared from>, "
    "given as a relative path",
    entry="ichseg evaluate --source --root",
)
def test_the_training_release_is_refused(trained, tmp_path, capsys, monkeypatch, record_behaviour):
    release, cache, ckpt = trained
    monkeypatch.chdir(release.parent)
    out = tmp_path / "e"
    code, err = _evaluate(ckpt, "bhsd", f"./{release.name}/", out, capsys)
    _refused(code, err, out)
    assert err.startswith(
        f"ichseg evaluate: error: {release}: is the release the checkpoints were trained on "
        f"(prepared cache {cache}, made from {release.resolve()}): all its {PATIENTS} volumes;"
    ), err
    record_behaviour(f"exit 2, nothing written: {err}")


@pytest.mark.reliability(
    case="external validation on a copy of the training release",
    did="the training release copied to another folder, given as --root",
    entry="ichseg evaluate --source --root",
)
def test_a_copy_of_the_training_release_is_refused(trained, tmp_path, capsys, record_behaviour):
    release, cache, ckpt = trained
    copy = shutil.copytree(release, tmp_path / "copy")
    out = tmp_path / "e"
    code, err = _evaluate(ckpt, "bhsd", copy, out, capsys)
    _refused(code, err, out)
    assert f"{copy}: has the labels (sha256 " in err and f"prepared cache {cache}" in err, err
    assert f"a copy, all its {PATIENTS} volumes" in err, err
    record_behaviour(f"exit 2, nothing written: {err}")


@pytest.mark.reliability(
    case="external validation on the training volumes in another layout",
    did="the same synthetic heads written in the PhysioNet layout (other file names, binary "
    "masks, a CSV), given as --source physionet --root",
    entry="ichseg evaluate --source --root",
)
def test_the_training_volumes_in_another_layout_are_refused(
    trained, tmp_path, capsys, record_behaviour
):
    _, cache, ckpt = trained
    other = write_phantom(tmp_path / "physionet", patients=PATIENTS, size=32, seed=2)
    out = tmp_path / "e"
    code, err = _evaluate(ckpt, "physionet", other, out, capsys)
    _refused(code, err, out)
    names = sorted(p.name.removesuffix(".nii") for p in (other / "ct_scans").iterdir())
    listed = ", ".join(names[:5]) + f" and {PATIENTS - 5} more"
    assert f"{other}: {PATIENTS} of its {PATIENTS} volumes ({listed}) are in the release" in err
    assert f"prepared cache {cache}" in err, err
    record_behaviour(f"exit 2, nothing written: {err}")


def _mixed(trained_release, folder, n_trained: int):
    """A BHSD-layout folder of `n_trained` training volumes and three volumes never trained on."""
    other = write_phantom(folder.parent / "other", patients=3, size=32, seed=5, layout="bhsd")
    shutil.copytree(other, folder)
    for name in _cases(trained_release)[:n_trained]:
        for sub in ("images", "ground truths"):
            shutil.copy(
                trained_release / "label_192" / sub / f"{name}.nii.gz",
                folder / "label_192" / sub / f"{name}.nii.gz",
            )
    return folder


@pytest.mark.reliability(
    case="external validation on a folder holding some training volumes",
    did="a BHSD folder of 3 new volumes and 2 volumes of the training release",
    entry="ichseg evaluate --source --root",
)
def test_a_folder_holding_some_training_volumes_is_refused(
    trained, tmp_path, capsys, record_behaviour
):
    release, _, ckpt = trained
    mixed = _mixed(release, tmp_path / "mixed", 2)
    out = tmp_path / "e"
    code, err = _evaluate(ckpt, "bhsd", mixed, out, capsys)
    _refused(code, err, out)
    shared = ", ".join(_cases(release)[:2])
    assert f"{mixed}: 2 of its 5 volumes ({shared}) are in the release" in err, err
    record_behaviour(f"exit 2, nothing written: {err}")


def test_a_folder_of_other_volumes_is_scored_without_a_word(trained, tmp_path, capsys):
    _, _, ckpt = trained
    other = write_phantom(tmp_path / "other", patients=3, size=32, seed=5, layout="bhsd")
    code, err = _evaluate(ckpt, "bhsd", other, tmp_path / "e", capsys)
    assert code == 0 and err == "", err
    assert json.loads((tmp_path / "e" / "summary.json").read_text())["n_patients"] == 3


@pytest.mark.reliability(
    case="external validation, training cache of an earlier ichseg",
    did="two checkpoints of a cache whose meta.json records no per-volume hashes, scored on a "
    "folder holding 2 of its volumes, then on the training release itself",
    entry="ichseg evaluate --source --root",
)
def test_a_cache_without_volume_hashes_is_said_once(trained, tmp_path, capsys, record_behaviour):
    release, cache, _ = trained
    old = shutil.copytree(cache, tmp_path / "cache" / cache.name)
    meta = json.loads((old / "meta.json").read_text())
    del meta["volume_sha256"]
    (old / "meta.json").write_text(json.dumps(meta))
    ckpts = [_job(tmp_path / "sweep" / f"unet-fold{k}", old) for k in (0, 1)]
    mixed = _mixed(release, tmp_path / "mixed", 2)
    code, err = _evaluate(ckpts, "bhsd", mixed, tmp_path / "e", capsys)
    assert code == 0, err
    assert err == (
        f"ichseg evaluate: warning: {old / 'meta.json'} records no per-volume hashes (prepared "
        f"by an earlier ichseg): {mixed} was compared with its training release by folder and "
        "labels only; delete the cache and prepare it again (the next training run or report "
        "does) to compare every volume"
    ), err
    out = tmp_path / "e2"
    code, err = _evaluate(ckpts[0], "bhsd", release, out, capsys)
    _refused(code, err, out)
    assert f"is the release the checkpoints were trained on (prepared cache {old}" in err
    record_behaviour(f"exit 0 with one warning line: {err}")


def test_an_unfinished_job_leads_to_its_cache_through_its_config(trained, tmp_path, capsys):
    """A job that has not finished names no cache_dir yet: its data.cache_root and the cache key
    its checkpoint records find the cache."""
    release, cache, _ = trained
    state = {"model": "unet", "fold": 0, "status": "running"}
    config = {"data": {"cache_root": str(cache.parent)}}
    ckpt = _job(tmp_path / "sweep" / "unet-fold0", cache, state, config)
    out = tmp_path / "e"
    code, err = _evaluate(ckpt, "bhsd", release, out, capsys)
    _refused(code, err, out)


def test_a_checkpoint_out_of_its_job_is_said_once(trained, tmp_path, capsys):
    release, _, _ = trained
    loose = save_checkpoint(passthrough_module(), tmp_path / "loose.ckpt", PRE)
    code, err = _evaluate(loose, "bhsd", release, tmp_path / "e", capsys)
    assert code == 0, err
    assert err == (
        f"ichseg evaluate: warning: checkpoint {loose}: cannot find the prepared cache it was "
        "trained on (no job.json beside it names one, and it records no key): whether "
        f"{release} holds its training volumes is not checked"
    ), err
