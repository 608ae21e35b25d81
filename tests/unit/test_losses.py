"""soft_dice_loss (MONAI's DiceLoss) against the Keras formula in numpy, under autocast, on
empty targets (values and gradients) and on perfect predictions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ichseg.errors import IchsegError
from ichseg.training.losses import soft_dice_loss


def sample(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (6, 1, 16, 16) and 0/1 float targets, two of them empty."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(6, 1, 16, 16, generator=g) * 3
    target = (torch.rand(6, 1, 16, 16, generator=g) < 0.2).float()
    target[:2] = 0
    return logits, target


def numpy_loss(logits, target, smooth, per_sample):
    p = 1.0 / (1.0 + np.exp(-logits.numpy().astype(np.float64)))
    t = target.numpy().astype(np.float64)
    p, t = p.reshape(len(p), -1), t.reshape(len(t), -1)
    if not per_sample:
        p, t = p.reshape(1, -1), t.reshape(1, -1)
    dice = (2 * (p * t).sum(1) + smooth) / (p.sum(1) + t.sum(1) + smooth)
    return float(np.mean(1 - dice))


@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("smooth", [100.0, 1.0, 1e-3])
def test_against_numpy(per_sample, smooth):
    logits, target = sample()
    got = soft_dice_loss(logits, target, smooth=smooth, per_sample=per_sample)
    assert got.ndim == 0 and got.dtype == torch.float32
    assert got.item() == pytest.approx(numpy_loss(logits, target, smooth, per_sample), rel=1e-6)
    # Every other dim is one channel: (B, H, W) scores as (B, 1, H, W).
    flat = soft_dice_loss(logits[:, 0], target[:, 0], smooth=smooth, per_sample=per_sample)
    assert flat.item() == pytest.approx(got.item(), rel=1e-6)


@pytest.mark.parametrize("per_sample", [False, True])
def test_empty_batch_against_numpy(per_sample):
    logits, _ = sample(seed=2)
    empty = torch.zeros_like(logits)
    got = soft_dice_loss(logits, empty, per_sample=per_sample).item()
    # 1 − 100/(Σp + 100): only the predicted foreground costs.
    assert got == pytest.approx(numpy_loss(logits, empty, 100.0, per_sample), rel=1e-6)
    assert 0 < got < 1


@pytest.mark.parametrize("per_sample", [False, True])
def test_fp32_under_autocast(per_sample):
    logits, target = sample(seed=3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = soft_dice_loss(logits, target, per_sample=per_sample)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(numpy_loss(logits, target, 100.0, per_sample), rel=1e-6)


def test_batch_and_per_sample_differ():
    logits, target = sample()
    assert soft_dice_loss(logits, target).item() != pytest.approx(
        soft_dice_loss(logits, target, per_sample=True).item(), rel=1e-3
    )


def test_bf16_and_channels_last_inputs():
    logits, target = sample()
    want = soft_dice_loss(logits.bfloat16().float(), target)
    got = soft_dice_loss(logits.bfloat16(), target.bool())
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want)
    cl = logits.to(memory_format=torch.channels_last)
    torch.testing.assert_close(soft_dice_loss(cl, target), soft_dice_loss(logits, target))


@pytest.mark.parametrize("per_sample", [False, True])
def test_gradient_finite_on_empty_targets(per_sample):
    logits = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 20
    logits.requires_grad_(True)
    loss = soft_dice_loss(logits, torch.zeros(4, 1, 8, 8), per_sample=per_sample)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0  # predicted foreground is pushed down


def test_perfect_prediction_is_near_zero():
    _, target = sample()
    logits = (target * 2 - 1) * 30
    assert soft_dice_loss(logits, target).item() == pytest.approx(0.0, abs=1e-6)
    assert soft_dice_loss(logits, target, per_sample=True).item() == pytest.approx(0.0, abs=1e-6)
    assert soft_dice_loss(-logits, target, smooth=1.0).item() > 0.99
    # The default is the authors' smooth 100: a wholly wrong prediction keeps 100/(Σp+Σt+100).
    area = float(target.sum()) + float((target == 0).sum())
    want = 1 - 100 / (area + 100)
    assert soft_dice_loss(-logits, target).item() == pytest.approx(want, rel=1e-5)


def test_shape_mismatch_raises():
    with pytest.raises(IchsegError, match="one shape"):
        soft_dice_loss(torch.zeros(2, 1, 8, 8), torch.zeros(2, 8, 8))
