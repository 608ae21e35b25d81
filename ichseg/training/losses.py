"""Soft Dice loss on sigmoid probabilities, as the authors' Keras `dice_coef_loss` (smooth 100)."""

from __future__ import annotations

import torch

from ichseg.errors import IchsegError


def soft_dice_loss(
    logits: torch.Tensor, target: torch.Tensor, smooth: float = 100.0, per_sample: bool = False
) -> torch.Tensor:
    """1 − (2·Σ p·t + s)/(Σ p + Σ t + s) with p = sigmoid(logits), as an fp32 scalar.

    MONAI's `DiceLoss(sigmoid=True, smooth_nr=s, smooth_dr=s)` on one channel. Default
    (`batch=True`): one value with the sums over the whole batch (Keras `dice_coef_loss`).
    `per_sample=True` (`batch=False`): the mean over samples of each sample's smoothed loss.
    Computed in fp32 even under autocast or for bf16 logits.
    """
    if logits.shape != target.shape or logits.ndim < 2:
        raise IchsegError(
            f"soft_dice_loss: expected logits and target of one shape (B, ...), "
            f"found {tuple(logits.shape)} and {tuple(target.shape)}"
        )
    # Imported here: loading a checkpoint for the report does not pay MONAI's start-up.
    from monai.losses import DiceLoss

    loss = DiceLoss(sigmoid=True, smooth_nr=smooth, smooth_dr=smooth, batch=not per_sample)
    with torch.autocast(device_type=logits.device.type, enabled=False):
        # One channel of every other dim flattened, so MONAI sums what Keras summed.
        return loss(logits.float().flatten(1).unsqueeze(1), target.float().flatten(1).unsqueeze(1))
