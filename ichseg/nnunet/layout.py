"""nnU-Net v2's file conventions as ichseg reads and writes them.

nnU-Net names a dataset `Dataset<NNN>_<name>` under `$nnUNet_raw`, one image per case as
`<case>_<channel:04d><ending>` in `imagesTr/` (and `imagesTs/`), labels as `<case><ending>` in
`labelsTr/`, and finds custom folds in `$nnUNet_preprocessed/<dataset>/splits_final.json`. Slices
are written as 8-bit PNG, which nnU-Net reads with its 2-d natural-image reader: exactly the
uint8 pixels of ichseg's prepared cache, and masks of 0/1. Case ids are ichseg's slice ids.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
from PIL import Image

from ichseg.errors import IchsegError

DATASET_NAME = "ICH"
FILE_ENDING = ".png"
CHANNEL = "_0000"
LABELS = {"background": 0, "hemorrhage": 1}
# The key of dataset.json where the export records which prepared cache and folds it holds;
# nnU-Net copies dataset.json into every results folder, so the import can check both.
ORIGIN_KEY = "ichseg"
# The export's own marker: a folder holding it (and dataset.json) is one ichseg wrote.
EXPORT_FILE = "ichseg_export.json"
SPLITS_FILE = "splits_final.json"
ENV_RAW, ENV_PREPROCESSED, ENV_RESULTS = "nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"
_DATASET_DIR = re.compile(r"^Dataset(?P<id>\d{3})_(?P<name>.+)$")


def dataset_folder_name(dataset_id: int) -> str:
    """`Dataset<NNN>_ICH` for an nnU-Net dataset id in 1..999."""
    if isinstance(dataset_id, bool) or not isinstance(dataset_id, int) or not 0 < dataset_id < 1000:
        raise IchsegError(f"--dataset-id: expected an integer in 1..999, found {dataset_id!r}")
    return f"Dataset{dataset_id:03d}_{DATASET_NAME}"


def dataset_id_taken(raw_root: Path, dataset_id: int) -> Path | None:
    """Another folder of `raw_root` that already uses `dataset_id` under a different name."""
    own = dataset_folder_name(dataset_id)
    if not raw_root.is_dir():
        return None
    for path in sorted(raw_root.iterdir()):
        match = _DATASET_DIR.match(path.name)
        if match and int(match["id"]) == dataset_id and path.name != own:
            return path
    return None


def env_folder(name: str) -> Path | None:
    """The folder an nnU-Net environment variable names, or None when it is unset or empty."""
    value = os.environ.get(name, "").strip()
    return Path(value) if value else None


def write_png(path: Path, array: np.ndarray) -> None:
    """Write a 2-d uint8 array as an 8-bit grey PNG."""
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(path)


def read_png(path: Path) -> np.ndarray:
    """A 2-d uint8 array from a PNG; one line naming the file when it is not one."""
    try:
        with Image.open(path) as img:
            return np.asarray(img)
    except (OSError, ValueError) as err:
        raise IchsegError(f"{path}: expected a PNG image, found unreadable data ({err})") from err
