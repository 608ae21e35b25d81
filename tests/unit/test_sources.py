"""Data sources: every layout the phantom writes, read by its source; wrong layouts refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ichseg.cli import main
from ichseg.config_schema import PHANTOM_LAYOUTS
from ichseg.data.mask_release import subtype_index
from ichseg.data.phantom import write_phantom
from ichseg.data.prepare import PrepareConfig, load_prepared, prepare
from ichseg.data.release import SUBTYPES
from ichseg.data.sources import (
    BHSD,
    LAYOUT_SOURCES,
    Instance22,
    NnunetRaw,
    Phantom,
    source_named,
)
from ichseg.errors import IchsegError

NEW_LAYOUTS = ("instance22", "bhsd", "nnunet_raw")


def test_every_layout_the_phantom_writes_is_read_by_the_source_of_its_name():
    assert tuple(LAYOUT_SOURCES) == PHANTOM_LAYOUTS
    assert all(LAYOUT_SOURCES[layout].name == layout for layout in PHANTOM_LAYOUTS)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> dict[str, Path]:
    """The same 12 synthetic patients in every layout."""
    root = tmp_path_factory.mktemp("layouts")
    return {
        name: write_phantom(root / name, patients=12, size=32, layout=name)
        for name in PHANTOM_LAYOUTS
    }


def _independent_labels(release, value_to_subtype: dict[int, int]) -> list[tuple]:
    """Per-slice (has ICH, subtype flags) read straight from the mask files with nibabel."""
    out = []
    for patient in release.patients:
        values = np.asarray(nib.load(release.mask_path(patient)).dataobj)
        for k in range(values.shape[2]):
            present = set(np.unique(values[:, :, k]).tolist()) - {0}
            flags = [0] * len(SUBTYPES)
            for value in present:
                if value in value_to_subtype:
                    flags[value_to_subtype[value]] = 1
            out.append((bool(present), tuple(flags)))
    return out


@pytest.mark.parametrize(
    "layout, value_to_subtype",
    [
        ("instance22", {}),
        ("bhsd", {1: 3, 2: 1, 3: 0, 4: 2, 5: 4}),  # BHSD: 1 EDH 2 IPH 3 IVH 4 SAH 5 SDH
        ("nnunet_raw", {i + 1: i for i in range(5)}),
    ],
)
def test_each_layout_reads_labels_and_subtypes_from_its_masks(phantoms, layout, value_to_subtype):
    release = LAYOUT_SOURCES[layout](str(phantoms[layout])).open()
    physionet = LAYOUT_SOURCES["physionet"](str(phantoms["physionet"])).open()
    assert len(release.patients) == 12 and release.source == layout
    labels = [(lab.has_ich, lab.subtypes) for lab in release.labels]
    assert labels == _independent_labels(release, value_to_subtype)
    # The same patients' hemorrhage slices as the PhysioNet layout's CSV says (per patient).
    per_volume = sorted(sum(lab.has_ich for lab in release.labels_for(p)) for p in release.patients)
    expected = sorted(
        sum(lab.has_ich for lab in physionet.labels_for(p)) for p in physionet.patients
    )
    assert per_volume == expected
    assert (release.subtypes_from is None) == (not value_to_subtype)
    volume = release.load_patient(release.patients[0])
    assert volume.mask.dtype == bool and volume.hu.shape == volume.mask.shape


@pytest.mark.parametrize("layout", NEW_LAYOUTS)
@pytest.mark.parametrize("split", ["slice", "patient"])
def test_each_layout_prepares_in_both_split_modes(phantoms, tmp_path, layout, split):
    source = LAYOUT_SOURCES[layout](str(phantoms[layout]))
    cfg = PrepareConfig(size=32, split=split, n_folds=2, test_fraction=0.2)
    data = load_prepared(prepare(source, tmp_path, cfg))
    release = source.open()
    assert data.meta["source"] == layout and data.splits["mode"] == split
    facts = data.meta["source_facts"]
    assert facts["volumes"] == 12 and facts["synthetic"] is True
    assert facts["slices"] == len(release.labels)
    assert int(data.has_ich.sum()) == sum(lab.has_ich for lab in release.labels)
    index = {lab.slice_id: lab for lab in release.labels}
    assert all(
        tuple(row) == index[sid].subtypes for sid, row in zip(data.ids, data.subtypes, strict=True)
    )


@pytest.mark.reliability(
    case="folder of another layout",
    did="each of the four sources pointed at the phantom written in each other layout",
    entry="ichseg prepare --source",
)
def test_a_folder_of_another_layout_is_refused_in_one_line(
    phantoms, tmp_path, capsys, record_behaviour
):
    seen = []
    for source in PHANTOM_LAYOUTS:
        for layout, root in phantoms.items():
            if layout == source:
                continue
            code = main(["prepare", str(root), str(tmp_path / "c"), "--source", source])
            err = capsys.readouterr().err.strip()
            assert code == 2 and len(err.splitlines()) == 1, err
            assert "expected" in err and "found" in err, err
            seen.append(err)
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())
    record_behaviour(f"exit 2, one line each, nothing written; e.g. {seen[-1]}")


def test_nii_and_nii_gz_and_missing_pairs(phantoms, tmp_path):
    root = shutil.copytree(phantoms["instance22"], tmp_path / "inst")
    first = root / "train/data/001.nii.gz"
    nib.save(nib.load(first), root / "train/data/001.nii")
    first.unlink()
    assert len(Instance22(str(root)).open().patients) == 12
    (root / "train/label/012.nii.gz").unlink()
    with pytest.raises(IchsegError, match=r"case 012 has no mask"):
        Instance22(str(root)).open()


def test_mask_values_must_be_in_the_label_map(phantoms, tmp_path):
    root = shutil.copytree(phantoms["nnunet_raw"], tmp_path / "nn")
    dataset = json.loads((root / "dataset.json").read_text())
    dataset["labels"] = {"background": 0, "bleed": 1}
    (root / "dataset.json").write_text(json.dumps(dataset))
    release = NnunetRaw(str(root)).open()
    assert release.subtypes_from is None
    with pytest.raises(
        IchsegError, match=r"ICH_001.nii.gz: value\(s\) \[[\d, ]+\] are not in the label map"
    ):
        release.labels  # noqa: B018
    dataset["labels"] = {"background": 0, "bleed": [1, 2]}
    (root / "dataset.json").write_text(json.dumps(dataset))
    with pytest.raises(IchsegError, match=r"region-based labels are not supported"):
        NnunetRaw(str(root)).open()


@pytest.mark.reliability(
    case="mask-labelled volume whose axial axis is stored first",
    did="an nnU-Net raw case re-saved with its axes permuted (z, x, y) and the affine to match",
    entry="prepare(), VolumeRelease.load_patient",
)
def test_a_volume_stored_axial_first_is_sliced_along_its_axial_axis(
    phantoms, tmp_path, record_behaviour
):
    root = shutil.copytree(phantoms["nnunet_raw"], tmp_path / "nn")
    original = NnunetRaw(str(root)).open()
    patient = next(
        p for p in original.patients if any(lab.has_ich for lab in original.labels_for(p))
    )
    before = original.load_patient(patient)
    before_labels = original.labels_for(patient)
    for path in (original.scan_path(patient), original.mask_path(patient)):
        image = nib.load(path)
        data = np.transpose(np.asarray(image.dataobj), (2, 0, 1))
        affine = image.affine[:, [2, 0, 1, 3]]
        nib.save(nib.Nifti1Image(data, affine), path)
    moved = NnunetRaw(str(root)).open()
    assert moved.labels_for(patient) == before_labels
    after = moved.load_patient(patient)
    assert np.array_equal(after.hu, before.hu) and np.array_equal(after.mask, before.mask)
    assert after.zooms == before.zooms
    record_behaviour(
        f"reoriented from the affine: slice labels and volume identical to the axial-last "
        f"file's ({len(before_labels)} slices)"
    )


def test_label_names_give_subtypes():
    assert [subtype_index(n) for n in ("EDH", "Epidural_hemorrhage", "subdural", "IVH")] == [
        3,
        3,
        4,
        0,
    ]
    assert subtype_index("hemorrhage") is None and subtype_index("background") is None


def test_source_named_reads_conf_data_and_import_paths(phantoms, tmp_path):
    assert source_named("bhsd", phantoms["bhsd"]) == BHSD(str(phantoms["bhsd"]))
    assert source_named("ichseg.data.sources.BHSD", "x") == BHSD("x")
    with pytest.raises(IchsegError, match=r"--source nope: no .*nope\.yaml; expected one of"):
        source_named("nope", "x")
    with pytest.raises(IchsegError, match=r"is not a data source class"):
        source_named("ichseg.errors.IchsegError", "x")


def test_phantom_source_in_every_layout(tmp_path):
    for layout in PHANTOM_LAYOUTS:
        source = Phantom(str(tmp_path / layout), patients=2, size=16, layout=layout)
        release = source.open()
        assert release.source == "phantom" and len(release.patients) == 2
        assert source.facts(release)["layout"] == layout


def test_cli_phantom_writes_a_layout(tmp_path, capsys):
    assert (
        main(
            ["phantom", str(tmp_path / "b"), "--patients", "2", "--size", "16", "--layout", "bhsd"]
        )
        == 0
    )
    assert (tmp_path / "b" / "label_192" / "ground truths").is_dir()
    assert (
        main(
            ["phantom", str(tmp_path / "b"), "--patients", "2", "--size", "16", "--layout", "bhsd"]
        )
        == 0
    )
    assert "nothing written" in capsys.readouterr().out


def _binary_export(release: Path, folder: Path) -> Path:
    """`release` copied to `folder` with every mask saved as 0/1, as a binary export writes
    them; without phantom.json it is a release of the user's, not ichseg's phantom."""
    root = shutil.copytree(release, folder)
    (root / "phantom.json").unlink()
    for path in root.rglob("*.nii.gz"):
        if path.parent.name in ("ground truths", "labelsTr"):
            image = nib.load(path)
            binary = (np.asarray(image.dataobj) > 0).astype(np.uint8)
            nib.save(nib.Nifti1Image(binary, image.affine, image.header), path)
    return root


@pytest.mark.reliability(
    case="binary masks in a subtype layout",
    did="a BHSD (and an nnU-Net raw) release whose masks were exported as 0/1, prepared "
    "without and then with --binary-labels",
    entry="ichseg prepare --source bhsd",
)
@pytest.mark.parametrize(
    "layout, masks", [("bhsd", "label_192/ground truths"), ("nnunet_raw", "labelsTr")]
)
def test_a_binary_export_of_a_subtype_layout_is_refused_unless_said(
    phantoms, tmp_path, capsys, layout, masks, record_behaviour
):
    root = _binary_export(phantoms[layout], tmp_path / "binary")
    argv = ["prepare", str(root), str(tmp_path / "c"), "--source", layout, "--size", "32"]
    argv += ["--n-folds", "2", "--test-fraction", "0.2"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"ichseg prepare: error: {root / masks}: all 12 masks (e.g. "), err
    assert "hold only the labels 0 and 1, but the" in err and "names subtypes (1 " in err, err
    assert "data.source.binary_labels=true (train.py) or --binary-labels" in err, err
    assert not (tmp_path / "c").exists()
    record_behaviour(f"exit 2, nothing written: {err}")

    assert main([*argv, "--binary-labels"]) == 0, capsys.readouterr().err
    data = load_prepared(next((tmp_path / "c").glob("[!.]*")))
    facts = data.meta["source_facts"]
    assert facts["label_map"] == {"1": "hemorrhage"} and facts["subtypes_from"] is None
    assert not data.subtypes.any()
    release = LAYOUT_SOURCES[layout](str(root), binary_labels=True).open()
    assert [lab.has_ich for lab in release.labels] == [
        has_ich for has_ich, _ in _independent_labels(release, {})
    ]


def test_binary_labels_on_masks_with_classes_is_refused(phantoms, tmp_path, capsys):
    argv = ["prepare", str(phantoms["bhsd"]), str(tmp_path / "c"), "--source", "bhsd"]
    assert main([*argv, "--binary-labels"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "in a release read with binary labels (0 and 1 only): its masks carry classes" in err
    assert (
        main(["prepare", str(phantoms["physionet"]), str(tmp_path / "c"), "--binary-labels"]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert err == (
        "ichseg prepare: error: --binary-labels: --source physionet takes no such setting (it "
        "applies to sources labelled by multi-class masks, e.g. bhsd and nnunet_raw)"
    ), err


def test_masks_of_only_0_and_1_in_a_subtype_release_are_volumes_of_value_1(phantoms, tmp_path):
    """The decision is the whole release's: one mask of 0/1 among masks with classes is a volume
    whose bleeds are all of value 1 (epidural in BHSD), as the label map says."""
    root = _binary_export(phantoms["bhsd"], tmp_path / "binary")
    classes = phantoms["bhsd"] / "label_192" / "ground truths"
    masks = sorted((root / "label_192" / "ground truths").iterdir())
    for path in masks[1:]:
        shutil.copy(classes / path.name, path)
    release = BHSD(str(root)).open()
    assert release.subtypes_from == "label map"
    assert [(lab.has_ich, lab.subtypes) for lab in release.labels] == _independent_labels(
        release, {1: 3, 2: 1, 3: 0, 4: 2, 5: 4}
    )


def test_a_small_phantom_of_one_subtype_keeps_its_subtype(tmp_path):
    """ichseg's phantom writes the values of its subtypes: one with only epidural bleeds (few
    patients) is no binary export."""
    root = write_phantom(tmp_path / "small", patients=2, size=32, layout="bhsd")
    release = BHSD(str(root)).open()
    values = set()
    for patient in release.patients:
        values |= set(np.unique(np.asarray(nib.load(release.mask_path(patient)).dataobj)).tolist())
    assert values == {0, 1}
    assert any(lab.subtypes[SUBTYPES.index("Epidural")] for lab in release.labels)
