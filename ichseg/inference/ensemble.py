"""Checkpoints whose sigmoid probabilities are averaged: the one ensemble of predict, evaluate
and the report's test scores.

Each network is put in inference form once: batch norm folded into the convolutions (the same
outputs up to float rounding, faster), channels-last, in the chosen precision, on the device.
A batch's probability is the mean over checkpoints (and, with flipping, over the input mirrored
left-right and its output mirrored back) of `sigmoid(logits)`, computed in float32.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ichseg.checkpoint import Checkpoint, load_checkpoint
from ichseg.errors import IchsegError
from ichseg.runtime import inference_precision


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


def require_shared(checkpoints: Sequence[Checkpoint], key: str, values: Sequence[object]) -> None:
    """Raise unless every checkpoint has the first one's `values` entry (its `key`)."""
    for checkpoint, value in zip(checkpoints[1:], values[1:], strict=True):
        if value != values[0]:
            raise IchsegError(
                f"checkpoints {checkpoints[0].path} and {checkpoint.path} differ in {key} "
                f"({values[0]} vs {value}): an ensemble averages one architecture"
            )


class Ensemble:
    """Checkpoints whose slice probabilities are averaged, optionally with left-right flipping.

    It takes over the checkpoints' networks (`Checkpoint.net`), putting them in inference form
    in place; a network already in that form is left as it is, so ensembles may share
    checkpoints of one precision.
    """

    def __init__(
        self,
        checkpoints: Sequence[Checkpoint],
        device: torch.device,
        flip: bool = False,
        batch_size: int = 16,
        precision: str = "fp32",
    ) -> None:
        if not checkpoints:
            raise IchsegError("predict: expected at least one checkpoint, found none")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise IchsegError(f"--batch-size: expected a positive integer, found {batch_size!r}")
        for key in ("filters", "batch_norm", "threshold"):
            require_shared(checkpoints, key, [getattr(c, key) for c in checkpoints])
        self.precision = inference_precision(precision, device)
        self.dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        self.checkpoints = list(checkpoints)
        self.nets = [
            fuse_batch_norm(c.net.eval()).to(
                device=device, dtype=self.dtype, memory_format=torch.channels_last
            )
            for c in self.checkpoints
        ]
        self.device = device
        self.flip = flip
        self.batch_size = batch_size
        self.threshold = self.checkpoints[0].threshold

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
        return cls([load_checkpoint(p) for p in paths], device, flip, batch_size, precision)

    @torch.inference_mode()
    def _mean(self, x: torch.Tensor) -> torch.Tensor:
        """Mean sigmoid probability (B, 1, S, S) over networks (and flips) for one batch."""
        x = x.to(self.device, self.dtype).contiguous(memory_format=torch.channels_last)
        total = torch.zeros(x.shape, dtype=torch.float32, device=self.device)
        for net in self.nets:
            total += torch.sigmoid(net(x).float())
            if self.flip:
                total += torch.sigmoid(net(x.flip(-1)).float()).flip(-1)
        return total / (len(self.nets) * (2 if self.flip else 1))

    def probabilities(self, x: torch.Tensor) -> Iterator[torch.Tensor]:
        """The mean probabilities of network inputs `x` (N, 1, S, S), one float32 tensor on the
        device per batch of `batch_size` slices, in order."""
        for batch in x.split(self.batch_size):
            yield self._mean(batch)
