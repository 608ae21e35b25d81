"""Slice transforms shared by `prepare` and `predict`: CT window, upright slices, resizing.

Prediction maps its outputs back through the same functions, so each one is deterministic and
documented exactly: the windowed intensities, the rotation and the mask threshold must match the
cache the models were trained on.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ichseg.errors import IchsegError


def window(hu: np.ndarray | torch.Tensor, level: float = 40.0, width: float = 120.0):
    """Map Hounsfield units to [0, 1]: clip((hu - (level - width / 2)) / width, 0, 1), float32."""
    if width <= 0:
        raise IchsegError(f"window width: expected a positive number of HU, found {width}")
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


def _check_stack(x: torch.Tensor, size: int, what: str) -> None:
    if x.ndim != 3:
        raise IchsegError(f"{what}: expected an (N, H, W) tensor, found shape {tuple(x.shape)}")
    if size < 1:
        raise IchsegError(f"{what}: expected a positive size, found {size}")


def resize_images(x: torch.Tensor, size: int) -> torch.Tensor:
    """(N, H, W) float -> (N, size, size), bilinear with antialiasing; unchanged at that size."""
    _check_stack(x, size, "resize_images")
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
    _check_stack(m, size, "resize_masks")
    if tuple(m.shape[1:]) == (size, size):
        return m.bool()
    # Area averaging then 0.5 keeps masks binary and the lesion area roughly constant, where
    # nearest sampling would drop or keep thin bleeds depending on where the grid falls.
    frac = F.interpolate(m[:, None].to(torch.float32), size=(size, size), mode="area")
    return frac[:, 0] >= 0.5
