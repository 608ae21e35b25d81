"""Soft Dice loss on sigmoid probabilities, as the authors' Keras `dice_coef_loss` (smooth 100)."""

from __future__ import annotations

import torch

from ichseg.errors import IchsegError


def soft_dice_loss(
    logits: torch.Tensor, target: torch.Tensor, smooth: float = 100.0, per_sample: bool = False
) -> torch.Tensor:
    """1 − (2·Σ p·t + s)/(Σ p + Σ t + s) with p = sigmoid(logits), as an fp32 scalar.

    Default: one value with the sums over the whole batch flattened (Keras `dice_coef_loss`,
    equal to MONAI `DiceLoss(sigmoid=True, smooth_nr=s, smooth_dr=s, batch=True)` for one
    channel). `per_sample=True`: the mean over samples of each sample's smoothed loss (MONAI
    `batch=False`). Computed in fp32 even under autocast or for bf16 logits.
    """
    if logits.shape != target.shape or logits.ndim < 2:
        raise IchsegError(
            f"soft_dice_loss: expected logits and target of one shape (B, ...), "
            f"found {tuple(logits.shape)} and {tuple(target.shape)}"
        )
    with torch.autocast(device_type=logits.device.type, enabled=False):
        p = torch.sigmoid(logits.float()).flatten(1)
        t = target.float().flatten(1)
        if per_sample:
            inter, total = (p * t).sum(1), p.sum(1) + t.sum(1)
        else:
            inter, total = (p * t).sum(), p.sum() + t.sum()
        return (1.0 - (2.0 * inter + smooth) / (total + smooth)).mean()
