"""Overlay images: CT in grey, ground truth in green, prediction in red (overlap shows yellow)."""

from __future__ import annotations

import numpy as np


def overlay_rgb(image: np.ndarray, truth: np.ndarray, pred: np.ndarray, alpha: float = 0.5):
    """An (H, W, 3) uint8 picture of a windowed slice in [0, 1] with truth and prediction tinted."""
    grey = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    tint = np.zeros_like(rgb)
    tint[..., 1] = np.asarray(truth, dtype=bool)
    tint[..., 0] = np.asarray(pred, dtype=bool)
    painted = tint.any(axis=-1, keepdims=True)
    rgb = np.where(painted, (1.0 - alpha) * rgb + alpha * tint, rgb)
    return (rgb * 255.0 + 0.5).astype(np.uint8)
