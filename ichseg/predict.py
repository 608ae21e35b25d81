"""Whole-scan prediction: NIfTI CT volume -> NIfTI hemorrhage mask + a JSON summary.

A scan is read as the training data was: Hounsfield units through nibabel's scaling, the
checkpoint's CT window, upright slices (`to_slices`, `np.rot90` k=1), bilinear antialiased resize
to the training size and the 8-bit rounding of the prepared cache. The slices are predicted in
batches by every checkpoint (optionally also mirrored left-right and mirrored back), the sigmoid
probabilities averaged, resized back to the scan's in-plane size (bilinear), thresholded
(probability > the checkpoints' threshold, 0.5 by default), rotated back (k=-1) and written with
the scan's exact shape and header geometry.

Bleeds are the 26-connected components of the 3-D mask (voxels touching by a face, an edge or a
corner are one bleed): with 5 mm slices the edge of a sloping bleed shifts by a few pixels from one
slice to the next, and should not split it in two.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import math
import numbers
import os
import pickle
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ichseg.atomic import atomic_path
from ichseg.data.release import NIFTI_READ_ERRORS, voxel_sizes
from ichseg.data.splits import SPLIT_KEY
from ichseg.data.transforms import (
    INTENSITIES,
    encode_intensity,
    resize_images,
    to_slices,
    window,
)
from ichseg.errors import IchsegError
from ichseg.models.unet import UNet, batch_norm_mode
from ichseg.runtime import inference_precision, pick_device

# Written by `SegmentationModule.on_save_checkpoint`: {"size", "level", "width"}.
PREPROCESS_KEY = "ichseg_preprocess"
CHECKPOINT_SUFFIXES = (".ckpt", ".pt", ".pth")
NIFTI_SUFFIXES = (".nii.gz", ".nii")
CONNECTIVITY = 26
STRUCTURE = ndimage.generate_binary_structure(3, 3)  # 26-connectivity
MASK_SUFFIX = "_mask.nii.gz"

# What torch.load raises on a file that is not a (complete) PyTorch checkpoint.
_TORCH_LOAD_ERRORS = (
    pickle.UnpicklingError,
    RuntimeError,
    EOFError,
    OSError,
    ValueError,
    AttributeError,
    ImportError,
    IndexError,
    KeyError,
    TypeError,
    zipfile.BadZipFile,
)


def _first_line(err: BaseException) -> str:
    """The first line of an exception's message, or its type when it has none."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


@dataclass(frozen=True)
class Preprocess:
    """The training inputs' settings: slice size in pixels, the CT window in HU, the intensity
    encoding (checkpoints written before it existed were all "linear")."""

    size: int
    level: float
    width: float
    intensity: str = "linear"

    @classmethod
    def parse(cls, values: dict, where: str) -> Preprocess:
        """Validate `{"size", "level", "width"[, "intensity"]}` read from `where` (named in
        errors)."""
        size, level, width = (values.get(key) for key in ("size", "level", "width"))
        if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1:
            raise IchsegError(f"{where}: size: expected a positive integer, found {size!r}")
        for key, value in (("level", level), ("width", width)):
            if (
                isinstance(value, bool)
                or not isinstance(value, numbers.Real)
                or not math.isfinite(value)
            ):
                raise IchsegError(f"{where}: {key}: expected a finite number, found {value!r}")
        if width <= 0:
            raise IchsegError(f"{where}: width: expected a positive window width, found {width}")
        intensity = values.get("intensity", "linear")
        if intensity not in INTENSITIES:
            raise IchsegError(
                f"{where}: intensity: expected one of {', '.join(INTENSITIES)}, found {intensity!r}"
            )
        return cls(int(size), float(level), float(width), intensity)


@dataclass
class Member:
    """One checkpoint of an ensemble: its network (eval mode) and what it was trained with."""

    path: Path
    net: UNet
    filters: tuple[int, ...]
    batch_norm: str
    threshold: float
    preprocess: Preprocess
    preprocess_source: str
    # The split it was trained on (`ichseg_split`), None for checkpoints that do not carry one.
    split: dict | None = None


def _read_config_preprocess(path: Path) -> Preprocess | None:
    """Preprocessing from the job's `config.yaml` (`<job>/checkpoints/x.ckpt`), if it exists."""
    config = path.parent.parent / "config.yaml"
    if not config.is_file():
        return None
    import yaml

    try:
        data = yaml.safe_load(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise IchsegError(f"{config}: cannot read as YAML ({_first_line(err)})") from None
    block = data.get("data") if isinstance(data, dict) else None
    if not isinstance(block, dict):
        raise IchsegError(f"{config}: expected a 'data' block for the checkpoint {path.name}")
    keys = {"size": "size", "level": "window_level", "width": "window_width"}
    missing = [f"data.{key}" for key in keys.values() if key not in block]
    if missing:
        raise IchsegError(f"{config}: missing {', '.join(missing)} (needed by {path.name})")
    values = {ours: block[theirs] for ours, theirs in keys.items()}
    values["intensity"] = block.get("intensity", "linear")
    return Preprocess.parse(values, str(config))


def load_member(path: str | os.PathLike, device: torch.device) -> Member:
    """Read one SegmentationModule checkpoint into an eval-mode network on `device`."""
    path = Path(path)
    if not path.is_file():
        found = "a folder" if path.is_dir() else "nothing"
        raise IchsegError(f"checkpoint {path}: expected a checkpoint file, found {found}")
    try:
        # Lightning checkpoints hold hyperparameters as Python objects, which the safe
        # (weights-only) unpickler refuses: load only checkpoints you trust.
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except _TORCH_LOAD_ERRORS as err:
        raise IchsegError(
            f"checkpoint {path}: cannot read as a PyTorch checkpoint ({_first_line(err)})"
        ) from None
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    weights = (
        {k[len("net.") :]: v for k, v in state.items() if k.startswith("net.")}
        if isinstance(state, dict)
        else {}
    )
    if not isinstance(hparams, dict) or "filters" not in hparams or not weights:
        keys = (
            sorted(map(str, checkpoint))[:6]
            if isinstance(checkpoint, dict)
            else type(checkpoint).__name__
        )
        raise IchsegError(
            f"checkpoint {path}: not an ichseg SegmentationModule checkpoint (expected "
            f"hyper_parameters with filters and net.* weights in state_dict, found {keys})"
        )
    try:
        filters = tuple(int(f) for f in hparams["filters"])
        batch_norm = batch_norm_mode(hparams.get("batch_norm", False))
        threshold = float(hparams.get("threshold", 0.5))
        net = UNet(filters=filters, batch_norm=batch_norm, dropout=hparams.get("dropout", 0.0))
    except (IchsegError, TypeError, ValueError) as err:
        raise IchsegError(f"checkpoint {path}: bad hyper_parameters ({_first_line(err)})") from None
    try:
        net.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        detail = " ".join(str(err).split())[:200]
        raise IchsegError(
            f"checkpoint {path}: weights do not fit the architecture of its hyper_parameters "
            f"(filters {filters}, batch_norm {batch_norm}): {detail}"
        ) from None
    stored = checkpoint.get(PREPROCESS_KEY)
    if isinstance(stored, dict):
        preprocess = Preprocess.parse(stored, f"checkpoint {path} {PREPROCESS_KEY}")
        source = "checkpoint"
    else:
        preprocess = _read_config_preprocess(path)
        source = str(path.parent.parent / "config.yaml")
        if preprocess is None:
            raise IchsegError(
                f"checkpoint {path}: no preprocessing settings; expected '{PREPROCESS_KEY}' in "
                f"the checkpoint or data.size/window_level/window_width in {source}, found neither"
            )
    net = fuse_batch_norm(net.eval()).to(device=device, memory_format=torch.channels_last)
    split = checkpoint.get(SPLIT_KEY)
    split = split if isinstance(split, dict) else None
    return Member(path, net, filters, batch_norm, threshold, preprocess, source, split)


def fuse_batch_norm(net: nn.Module) -> nn.Module:
    """Fold every eval-mode BatchNorm2d into the convolution before it (same outputs, faster)."""
    for block in net.modules():
        if not isinstance(block, nn.Sequential):
            continue
        for i in range(len(block) - 1):
            if isinstance(block[i], nn.Conv2d) and isinstance(block[i + 1], nn.BatchNorm2d):
                block[i] = fuse_conv_bn_eval(block[i], block[i + 1])
                block[i + 1] = nn.Identity()
    return net


def _fingerprint(member: Member) -> dict[str, object]:
    """What an ensemble's members must share to be averaged."""
    return {
        "filters": member.filters,
        "batch_norm": member.batch_norm,
        "threshold": member.threshold,
        "preprocess": member.preprocess,
    }


class Ensemble:
    """Checkpoints whose slice probabilities are averaged, optionally with left-right flipping."""

    def __init__(
        self,
        members: Sequence[Member],
        device: torch.device,
        flip: bool = False,
        batch_size: int = 16,
        precision: str = "fp32",
    ) -> None:
        if not members:
            raise IchsegError("predict: expected at least one checkpoint, found none")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise IchsegError(f"--batch-size: expected a positive integer, found {batch_size!r}")
        first = members[0]
        for other in members[1:]:
            a, b = _fingerprint(first), _fingerprint(other)
            for key in a:
                if a[key] != b[key]:
                    raise IchsegError(
                        f"checkpoints {first.path} and {other.path} differ in {key} "
                        f"({a[key]} vs {b[key]}): an ensemble averages one architecture"
                    )
        divisor = first.net.divisor
        if first.preprocess.size % divisor:
            raise IchsegError(
                f"checkpoint {first.path}: size {first.preprocess.size} is not divisible by "
                f"{divisor}, which its {len(first.filters)}-level network needs"
            )
        self.precision = inference_precision(precision, device)
        self.dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        for member in members:
            member.net.to(self.dtype)
        self.members = list(members)
        self.device = device
        self.flip = flip
        self.batch_size = batch_size
        self.preprocess = first.preprocess
        self.threshold = first.threshold

    @classmethod
    def load(
        cls,
        paths: Sequence[str | os.PathLike],
        device: torch.device,
        flip: bool = False,
        batch_size: int = 16,
        precision: str = "fp32",
    ) -> Ensemble:
        """Load every checkpoint and check they can be averaged."""
        inference_precision(precision, device)  # a typo fails before minutes of loading
        members = [load_member(p, device) for p in paths]
        return cls(members, device, flip, batch_size, precision)

    def slices(self, hu: np.ndarray) -> torch.Tensor:
        """(H, W, N) HU -> (N, 1, S, S) network inputs, exactly as the prepared cache made them."""
        p = self.preprocess
        # A copy: numpy calls a rotated view with a length-1 axis contiguous although its strides
        # are negative, which torch refuses.
        upright = torch.from_numpy(to_slices(window(hu, p.level, p.width)).copy())
        scaled = resize_images(upright, p.size)
        # The cache stores 8-bit images (the paper's PNGs); the networks never saw finer steps.
        eight_bit = scaled.mul_(255).round_().clamp_(0, 255).to(torch.uint8)
        return encode_intensity(eight_bit, p.intensity)[:, None]

    @torch.inference_mode()
    def _probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Mean sigmoid probability (B, 1, S, S) over members (and flips) for one batch."""
        x = x.to(self.device, self.dtype).contiguous(memory_format=torch.channels_last)
        total = torch.zeros(x.shape, dtype=torch.float32, device=self.device)
        for member in self.members:
            total += torch.sigmoid(member.net(x).float())
            if self.flip:
                total += torch.sigmoid(member.net(x.flip(-1)).float()).flip(-1)
        return total / (len(self.members) * (2 if self.flip else 1))

    @torch.inference_mode()
    def predict(self, hu: np.ndarray) -> np.ndarray:
        """Boolean mask (H, W, N) of a scan in HU (H, W, N), in the scan's own orientation."""
        x = self.slices(hu)
        upright_shape = (hu.shape[1], hu.shape[0])
        masks = []
        for batch in x.split(self.batch_size):
            prob = self._probabilities(batch)
            prob = F.interpolate(
                prob, size=upright_shape, mode="bilinear", align_corners=False, antialias=True
            )
            masks.append((prob[:, 0] > self.threshold).cpu())
        upright = torch.cat(masks).numpy()
        return from_slices(upright)


def from_slices(upright: np.ndarray) -> np.ndarray:
    """Inverse of `to_slices`: (N, W, H) upright slices -> (H, W, N), each `np.rot90` k=-1."""
    return np.ascontiguousarray(np.rot90(upright.transpose(1, 2, 0), k=-1, axes=(0, 1)))


@dataclass
class Scan:
    """A NIfTI CT scan, checked to hold one 3-D volume; `hu` is read on demand."""

    path: Path
    image: nib.Nifti1Image
    shape: tuple[int, ...]
    zooms: tuple[float, float, float]

    @property
    def stem(self) -> str:
        """The file name without `.nii` / `.nii.gz`."""
        name = self.path.name
        return name[: -len(next(s for s in NIFTI_SUFFIXES if name.lower().endswith(s)))]

    def read_hu(self) -> np.ndarray:
        """Hounsfield units (H, W, N) float32 through nibabel's scaling; all finite."""
        try:
            data = self.image.get_fdata(dtype=np.float32, caching="unchanged")
        except NIFTI_READ_ERRORS as err:
            raise IchsegError(
                f"scan {self.path}: cannot read voxels ({_first_line(err)})"
            ) from None
        hu = data.reshape(self.shape[:3])
        bad = hu.size - int(np.count_nonzero(np.isfinite(hu)))
        if bad:
            raise IchsegError(f"scan {self.path}: {bad} voxels are NaN or infinite")
        return hu


def open_scan(path: str | os.PathLike) -> Scan:
    """Open a `.nii` / `.nii.gz` scan and check its header: one 3-D volume, positive voxel sizes."""
    path = Path(path)
    if not path.is_file():
        found = "a folder" if path.is_dir() else "nothing"
        raise IchsegError(f"scan {path}: expected a NIfTI file, found {found}")
    if not path.name.lower().endswith(NIFTI_SUFFIXES):
        raise IchsegError(
            f"scan {path}: expected a NIfTI file ending in .nii or .nii.gz "
            f"(checkpoints end in {', '.join(CHECKPOINT_SUFFIXES)})"
        )
    try:
        image = nib.load(path)
        if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
            raise IchsegError(f"scan {path}: expected a NIfTI image, found {type(image).__name__}")
        shape = tuple(int(n) for n in image.shape)
    except IchsegError:
        raise
    except NIFTI_READ_ERRORS as err:
        raise IchsegError(f"scan {path}: cannot read as NIfTI ({_first_line(err)})") from None
    # A trailing singleton axis (H, W, N, 1) is still one volume; real 4-D data is not.
    if len(shape) < 3 or any(n != 1 for n in shape[3:]):
        raise IchsegError(f"scan {path}: expected a 3-D volume (H, W, slices), found shape {shape}")
    if min(shape[:3]) < 1:
        raise IchsegError(f"scan {path}: expected a non-empty volume, found shape {shape}")
    try:
        zooms = voxel_sizes(image, path, f"scan {path}")
    except NIFTI_READ_ERRORS as err:
        raise IchsegError(f"scan {path}: cannot read as NIfTI ({_first_line(err)})") from None
    return Scan(path, image, shape, zooms)  # type: ignore[arg-type]


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    """The smallest box holding every set voxel (empty slices for an empty mask)."""
    box = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=others))
        box.append(slice(int(hits[0]), int(hits[-1]) + 1) if hits.size else slice(0, 0))
    return tuple(box)


def summarize(mask: np.ndarray, zooms: Sequence[float]) -> dict:
    """Hemorrhage slices (1-based, last axis), bleed volume (mL) and 26-connected bleeds."""
    voxel_ml = float(np.prod(zooms[:3])) / 1000.0
    box = _bounding_box(mask)
    # Labelling only the box around the bleeds: a whole 512×512×40 volume costs ~0.2 s.
    labels, n_bleeds = ndimage.label(mask[box], structure=STRUCTURE)
    sizes = np.bincount(labels.ravel(), minlength=n_bleeds + 1)[1:]
    found_boxes = ndimage.find_objects(labels) if n_bleeds else []
    first = box[2].start
    bleeds = [
        {
            "voxels": int(size),
            "volume_ml": round(float(size) * voxel_ml, 4),
            "slices": [first + found[2].start + 1, first + found[2].stop],
        }
        for size, found in zip(sizes, found_boxes, strict=True)
    ]
    bleeds.sort(key=lambda b: -b["voxels"])
    per_slice = np.count_nonzero(mask, axis=(0, 1))
    voxels = int(per_slice.sum())
    return {
        "n_slices": int(mask.shape[2]),
        "slices_with_hemorrhage": [int(i) + 1 for i in np.flatnonzero(per_slice)],
        "n_slices_with_hemorrhage": int(np.count_nonzero(per_slice)),
        "bleed_voxels": voxels,
        "bleed_volume_ml": round(voxels * voxel_ml, 4),
        "n_bleeds": int(n_bleeds),
        "connectivity": CONNECTIVITY,
        "bleeds": bleeds,
        "voxel_mm": [float(z) for z in zooms[:3]],
    }


def mask_image(scan: Scan, mask: np.ndarray) -> nib.Nifti1Image:
    """The mask as uint8 0/1 with the scan's shape and header geometry (affine, q/sform, zooms)."""
    header = scan.image.header.copy()
    header.set_data_dtype(np.uint8)
    header.set_slope_inter(1.0, 0.0)
    header["cal_min"], header["cal_max"] = 0, 1
    data = mask.astype(np.uint8).reshape(scan.shape)
    # affine=None keeps the header's qform and sform (codes included) exactly as the scan's.
    return type(scan.image)(data, None, header)


def output_paths(outdir: Path, scan: Scan) -> tuple[Path, Path]:
    """Where the mask and the JSON summary of `scan` go."""
    return outdir / f"{scan.stem}{MASK_SUFFIX}", outdir / f"{scan.stem}.json"


def _earlier_prediction(json_path: Path, mask_path: Path) -> bool:
    """True when `json_path` is the summary `ichseg predict` wrote next to `mask_path`."""
    try:
        summary = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(summary, dict) and Path(str(summary.get("mask", ""))).name == mask_path.name


def check_outputs_free(outdir: Path, scans: Sequence[Scan]) -> None:
    """Raise unless every output path is free or holds an earlier prediction of the same name:
    a file the user put there (a mask of their own, say) is never replaced."""
    for scan in scans:
        mask_path, json_path = output_paths(outdir, scan)
        taken = [p for p in (mask_path, json_path) if p.exists() or p.is_symlink()]
        if taken and not _earlier_prediction(json_path, mask_path):
            raise IchsegError(
                f"{taken[0]}: exists and is not an earlier ichseg predict output (no "
                f"{json_path.name} naming {mask_path.name}); choose another -o or remove it"
            )


def prepare_outdir(outdir: str | os.PathLike) -> Path:
    """Create `outdir` if needed and check a file can be written there; one line otherwise."""
    outdir = Path(outdir)
    try:
        outdir.mkdir(parents=True, exist_ok=True)
        with atomic_path(outdir / ".ichseg-write-test") as tmp:
            tmp.write_bytes(b"")
        (outdir / ".ichseg-write-test").unlink()
    except OSError as err:
        raise IchsegError(
            f"output folder {outdir}: cannot write there ({_first_line(err)})"
        ) from None
    return outdir


def write_outputs(scan: Scan, mask: np.ndarray, summary: dict, outdir: Path) -> tuple[Path, Path]:
    """Write `<stem>_mask.nii.gz` then `<stem>.json`, each atomically."""
    mask_path, json_path = output_paths(outdir, scan)
    # mtime=0: the same mask gives the same bytes.
    blob = gzip.compress(mask_image(scan, mask).to_bytes(), compresslevel=1, mtime=0)
    try:
        with atomic_path(mask_path) as tmp:
            tmp.write_bytes(blob)
        with atomic_path(json_path) as tmp:
            tmp.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    except OSError as err:
        raise IchsegError(f"output folder {outdir}: cannot write ({_first_line(err)})") from None
    return mask_path, json_path


def split_paths(paths: Sequence[str]) -> tuple[list[Path], list[Path]]:
    """Checkpoints (`.ckpt`, `.pt`, `.pth`) and scans (everything else), in the order given."""
    checkpoints = [Path(p) for p in paths if p.lower().endswith(CHECKPOINT_SUFFIXES)]
    scans = [Path(p) for p in paths if not p.lower().endswith(CHECKPOINT_SUFFIXES)]
    if not checkpoints:
        raise IchsegError(
            f"predict: expected at least one checkpoint ({', '.join(CHECKPOINT_SUFFIXES)}) "
            "before the scans, found none"
        )
    if not scans:
        raise IchsegError("predict: expected at least one scan (.nii or .nii.gz), found none")
    return checkpoints, scans


@contextlib.contextmanager
def progress_bar(total: int, label: str, enabled: bool = True) -> Iterator[Callable[[], None]]:
    """A progress bar on stderr, drawn only on a terminal; yields the function that advances it."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, disable=not (enabled and console.is_terminal)) as bar:
        task = bar.add_task(label, total=total)
        yield lambda: bar.advance(task)


def predict_scans(
    checkpoints: Sequence[str | os.PathLike],
    scans: Sequence[str | os.PathLike],
    outdir: str | os.PathLike,
    *,
    flip: bool = False,
    batch_size: int = 16,
    device: str | None = None,
    precision: str = "auto",
    on_scan: Callable[[dict], None] | None = None,
    progress: bool = True,
) -> list[dict]:
    """Predict every scan with the averaged checkpoints; write masks and summaries to `outdir`.

    Every input is checked (checkpoints loaded, scan headers read, output folder writable)
    before the first scan is predicted, so a bad argument writes nothing.
    """
    target = pick_device(device)
    ensemble = Ensemble.load(checkpoints, target, flip, batch_size, precision)
    opened = [open_scan(p) for p in scans]
    seen: dict[str, Path] = {}
    for scan in opened:
        if scan.stem in seen:
            raise IchsegError(
                f"scans {seen[scan.stem]} and {scan.path} would both write {scan.stem}{MASK_SUFFIX}"
            )
        seen[scan.stem] = scan.path
    check_outputs_free(Path(outdir), opened)
    out = prepare_outdir(outdir)
    summaries = []
    with progress_bar(len(opened), "scans", progress) as advance:
        for scan in opened:
            summaries.append(_predict_one(ensemble, scan, out))
            advance()
            if on_scan is not None:
                on_scan(summaries[-1])
    return summaries


def _predict_one(ensemble: Ensemble, scan: Scan, out: Path) -> dict:
    """Predict one scan, write its mask and summary, return the summary."""
    start = time.perf_counter()
    mask = ensemble.predict(scan.read_hu())
    summary = {
        "scan": str(scan.path),
        "mask": str(output_paths(out, scan)[0]),
        "shape": list(scan.shape),
        **summarize(mask, scan.zooms),
        "checkpoints": [str(m.path) for m in ensemble.members],
        "preprocess": {
            "size": ensemble.preprocess.size,
            "window_level": ensemble.preprocess.level,
            "window_width": ensemble.preprocess.width,
            "intensity": ensemble.preprocess.intensity,
            "from": ensemble.members[0].preprocess_source,
        },
        "flip_tta": ensemble.flip,
        "threshold": ensemble.threshold,
        "device": str(ensemble.device),
        "precision": ensemble.precision,
        "seconds": round(time.perf_counter() - start, 3),
    }
    write_outputs(scan, mask, summary, out)
    return summary
