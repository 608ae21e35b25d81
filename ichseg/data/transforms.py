"""Slice transforms shared by `prepare` and inference: CT window, upright slices, resizing.

`prepared_slices` is the one chain from a scan in HU to the slices the prepared cache stores, and
inference reads every scan through it; `from_slices` maps predictions back. Each step is
deterministic and documented exactly: the windowed intensities, the rotation and the mask
threshold must match the cache the models were trained on.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ichseg.config_schema import check_keys
from ichseg.errors import IchsegError


def window(hu: np.ndarray | torch.Tensor, level: float = 40.0, width: float = 120.0):
    """Map Hounsfield units to [0, 1]: clip((hu - (level - width / 2)) / width, 0, 1), float32."""
    check_keys({"data.window_width": width})
    low = level - width / 2
    if isinstance(hu, torch.Tensor):
        return ((hu.to(torch.float32) - low) / width).clamp_(0.0, 1.0)
    x = np.asarray(hu, dtype=np.float32)
    return np.clip((x - np.float32(low)) / np.float32(width), 0.0, 1.0)


def to_slices(volume_hwn: np.ndarray) -> np.ndarray:
    """(H, W, N) volume -> contiguous (N, H', W') slices, each `np.rot90(k=1)` (upright head)."""
    if volume_hwn.ndim != 3:
        raise IchsegError(
            f"to_slices: expected an (H, W, N) volume, found shape {volume_hwn.shape}"
        )
    return np.ascontiguousarray(np.rot90(volume_hwn, k=1, axes=(0, 1)).transpose(2, 0, 1))


def from_slices(upright: np.ndarray) -> np.ndarray:
    """Inverse of `to_slices`: (N, W, H) upright slices -> (H, W, N), each `np.rot90` k=-1."""
    return np.ascontiguousarray(np.rot90(upright.transpose(1, 2, 0), k=-1, axes=(0, 1)))


def _check_stack(x: torch.Tensor, what: str) -> None:
    """Refuse anything but an (N, H, W) stack; the size comes checked (the schema's `data.size`
    for a cache, a checkpoint's recorded size for inference)."""
    if x.ndim != 3:
        raise IchsegError(f"{what}: expected an (N, H, W) tensor, found shape {tuple(x.shape)}")


def resize_images(x: torch.Tensor, size: int) -> torch.Tensor:
    """(N, H, W) float -> (N, size, size), bilinear with antialiasing; unchanged at that size."""
    _check_stack(x, "resize_images")
    if tuple(x.shape[1:]) == (size, size):
        return x
    out = F.interpolate(
        x[:, None].to(torch.float32),
        size=(size, size),
        mode="bilinear",
        align_corners=False,
        antialias=True,
    )
    return out[:, 0]


def resize_masks(m: torch.Tensor, size: int) -> torch.Tensor:
    """(N, H, W) bool -> (N, size, size) bool: area interpolation, then a pixel is set at >= 0.5."""
    _check_stack(m, "resize_masks")
    if tuple(m.shape[1:]) == (size, size):
        return m.bool()
    # Area averaging then 0.5 keeps masks binary and the lesion area roughly constant, where
    # nearest sampling would drop or keep thin bleeds depending on where the grid falls.
    frac = F.interpolate(m[:, None].to(torch.float32), size=(size, size), mode="area")
    return frac[:, 0] >= 0.5


def prepared_slices(hu: np.ndarray, level: float, width: float, size: int) -> torch.Tensor:
    """(H, W, N) HU -> (N, size, size) uint8, as the prepared cache stores slices: the CT window,
    upright slices, antialiased bilinear resize, then rounding to 8 bits (the paper's PNGs)."""
    # A copy: numpy calls a rotated view with a length-1 axis contiguous although its strides
    # are negative, which torch refuses.
    upright = torch.from_numpy(to_slices(window(hu, level, width)).copy())
    scaled = resize_images(upright, size)
    # Clamp guards the uint8 cast; [0, 1] inputs stay in range after antialiased bilinear.
    return scaled.mul_(255).round_().clamp_(0, 255).to(torch.uint8)


def _viridis_grey_lut() -> torch.Tensor:
    """Grey level (0-255) of each of viridis' 256 colours as PIL's convert("L") computes it."""
    from matplotlib import colormaps

    rgba = colormaps["viridis"].resampled(256)(np.arange(256), bytes=True).astype(np.int64)
    # PIL's ITU-R 601-2 luma in 16-bit fixed point: L = R·299/1000 + G·587/1000 + B·114/1000.
    grey = (rgba[:, 0] * 19595 + rgba[:, 1] * 38470 + rgba[:, 2] * 7471 + 0x8000) >> 16
    return torch.from_numpy(grey.astype(np.float32))


def encode_intensity(slices: torch.Tensor, intensity: str = "linear") -> torch.Tensor:
    """(N, H, W) uint8 windowed slices -> (N, H, W) float32 network input.

    "linear": value / 255, in [0, 1]. "viridis_png": what the authors' networks saw, who saved
    each windowed slice with matplotlib's `imsave` (viridis colour map, scaled to the slice's own
    min..max) and read the PNG back as grey (PIL luma) / 255: values span about 0.12-0.85.
    """
    check_keys({"data.intensity": intensity})
    if slices.dtype != torch.uint8 or slices.ndim != 3:
        raise IchsegError(
            f"encode_intensity: expected (N, H, W) uint8 slices, found {slices.dtype} "
            f"{tuple(slices.shape)}"
        )
    x = slices.to(torch.float32)
    if intensity == "linear":
        return x.div_(255)
    low = x.amin(dim=(1, 2), keepdim=True)
    span = x.amax(dim=(1, 2), keepdim=True) - low
    # matplotlib's Normalize maps a constant slice to 0; Colormap takes floor(v·256), 1.0 -> 255.
    scaled = torch.where(span > 0, (x - low) / span.clamp_min(1), torch.zeros_like(x))
    index = (scaled * 256).floor_().clamp_(0, 255).long()
    return _viridis_grey_lut().to(x.device)[index].div_(255)
