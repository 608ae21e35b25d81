"""bf16 mixed precision against fp32: one training step compared, and a bf16-mixed Trainer run."""

from __future__ import annotations

import copy
import math

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ichseg.models.unet import unet_config
from ichseg.training.module import SegmentationModule

LR = 1e-3
FILTERS = (8, 16, 32)


def blob_batch(seed: int = 0, n: int = 4, size: int = 32) -> dict[str, torch.Tensor]:
    """Smooth images with a brighter disc where the mask is; the first sample has no bleed."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 1, size // 4, size // 4, generator=gen)
    image = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    cy, cx = (torch.randint(8, size - 8, (n, 1, 1), generator=gen) for _ in range(2))
    radius = torch.randint(3, 7, (n, 1, 1), generator=gen)
    mask = ((yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2).float().unsqueeze(1)
    mask[0] = 0
    return {"image": (image + 0.5 * mask).clamp(0, 1), "mask": mask}


def one_step(module: SegmentationModule, batch: dict, bf16: bool) -> dict:
    """training_step -> backward -> Adam step, under CPU bf16 autocast (as bf16-mixed) or not."""
    seen = {}
    hook = module.net.register_forward_hook(lambda m, i, out: seen.update(logits=out.dtype))
    optimizer = module.configure_optimizers()["optimizer"]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = module.training_step(batch, 0)
    loss.backward()
    hook.remove()
    grads = {name: p.grad.clone() for name, p in module.net.named_parameters()}
    optimizer.step()
    params = {name: p.detach().clone() for name, p in module.net.named_parameters()}
    return {"loss": loss.detach(), "logits": seen["logits"], "grads": grads, "params": params}


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((b - a).norm() / a.norm()).item()


@pytest.mark.parametrize("batch_norm", [True, False], ids=["dunet-like", "unet-like"])
def test_bf16_step_follows_the_fp32_step(batch_norm: bool) -> None:
    torch.manual_seed(0)
    base = SegmentationModule(net=unet_config(FILTERS, batch_norm, 0.0), lr=LR)
    batch = blob_batch()
    fp32 = one_step(copy.deepcopy(base), batch, bf16=False)
    bf16 = one_step(copy.deepcopy(base), batch, bf16=True)

    # Autocast really ran the network in bf16, while the loss, gradients and weights stay fp32.
    assert (fp32["logits"], bf16["logits"]) == (torch.float32, torch.bfloat16)
    assert bf16["loss"].dtype == torch.float32 == fp32["loss"].dtype
    assert all(g.dtype == torch.float32 for g in bf16["grads"].values())
    assert all(p.dtype == torch.float32 for p in bf16["params"].values())
    assert not torch.equal(bf16["loss"], fp32["loss"])

    # The logits carry bf16's relative rounding (2^-9 per step of the network); the fp32 Dice loss
    # averages thousands of sigmoid terms, so it moves far less (measured: at most 3e-4 over four
    # seeds, both networks). 1e-2 is bf16's ~3 significant digits, with room for other CPUs.
    assert bf16["loss"].item() == pytest.approx(fp32["loss"].item(), rel=1e-2)

    # At initialisation the Dice gradient is nearly uniform over the pixels and what reaches the
    # deeper weights is a small difference of large terms, so it is sensitive: rounding only the
    # input to bf16 (fp32 compute) moves single tensors' gradients by up to 30%. bf16 autocast
    # rounds every convolution's input; over four seeds it measured, per tensor, cosine >= 0.89
    # and relative error <= 0.47 (0.977 and 0.23 without batch norm), and over all weights
    # together cosine >= 0.98 and relative error <= 0.20. The bounds sit just outside those; a
    # wrong gradient (another batch's, or twice the right one) fails them.
    grads32, grads16 = fp32["grads"], bf16["grads"]
    for name, grad in grads32.items():
        assert _cosine(grad, grads16[name]) > 0.85, name
        assert _relative(grad, grads16[name]) < 0.6, name
    flat32 = torch.cat([g.flatten() for g in grads32.values()])
    flat16 = torch.cat([grads16[name].flatten() for name in grads32])
    assert _cosine(flat32, flat16) > 0.97
    assert _relative(flat32, flat16) < 0.3

    # Adam's first step moves every weight by lr * g / (|g| + eps), about +-lr, so a weight whose
    # gradient is within bf16's error of zero lands 2 * lr from its fp32 value. Over four seeds:
    # at most 10% of the weights, mean distance <= 0.19 * lr. A random-sign gradient would move
    # half of them and give a mean distance of lr.
    start = {name: p.detach() for name, p in base.net.named_parameters()}
    moved = torch.cat([(fp32["params"][n] - start[n]).abs().flatten() for n in start])
    apart = torch.cat([(bf16["params"][n] - fp32["params"][n]).abs().flatten() for n in start])
    assert moved.mean().item() > 0.5 * LR  # the step happened
    assert apart.mean().item() < 0.3 * LR
    assert (apart > LR).float().mean().item() < 0.15


class _Recording(SegmentationModule):
    """Records the dtypes of the logits and the loss of every training step."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.steps: list[tuple[torch.dtype, torch.dtype, float]] = []
        self._logits_dtype: torch.dtype | None = None

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        logits = super().forward(image)
        self._logits_dtype = logits.dtype
        return logits

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        self.steps.append((self._logits_dtype, loss.dtype, loss.item()))
        return loss


def test_bf16_mixed_trainer_trains_in_bf16_with_an_fp32_loss() -> None:
    torch.manual_seed(0)
    module = _Recording(net=unet_config(FILTERS, True, 0.2), lr=LR)
    start = {name: p.detach().clone() for name, p in module.net.named_parameters()}
    trainer = pl.Trainer(
        precision="bf16-mixed",
        accelerator="cpu",
        devices=1,
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    loader = DataLoader([blob_batch(seed) for seed in (1, 2)], batch_size=None)
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=loader)
    assert trainer.global_step == 2
    assert [(logits, loss) for logits, loss, _ in module.steps] == [
        (torch.bfloat16, torch.float32)
    ] * 2
    assert all(math.isfinite(value) for _, _, value in module.steps)
    for name, param in module.net.named_parameters():
        assert param.dtype == torch.float32, name
        assert torch.isfinite(param).all(), name
    assert any(not torch.equal(p, start[n]) for n, p in module.net.named_parameters())
    # The epoch's losses, accumulated from bf16 steps, are numbers.
    assert all(math.isfinite(module.epoch_metrics[stage]["loss"]) for stage in ("train", "val"))


def test_the_precision_option_offers_exactly_the_precisions_inference_takes():
    """The command line names them without importing torch; they must not drift apart."""
    import argparse

    from ichseg.arguments import inference_options
    from ichseg.runtime import INFERENCE_PRECISIONS

    parser = argparse.ArgumentParser()
    inference_options(parser, "fp32")
    option = next(a for a in parser._actions if a.dest == "precision")
    assert tuple(option.choices) == INFERENCE_PRECISIONS
