"""Tiny SegmentationModules with known outputs, and the checkpoints predict and evaluate read."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from ichseg.checkpoint import Preprocess, write_checkpoint
from ichseg.training.module import SegmentationModule

FILTERS = (4, 8, 16)
PRE = Preprocess(size=32, level=40.0, width=120.0)
PRE64 = dataclasses.replace(PRE, size=64)


def random_module(seed: int = 0, batch_norm: bool = True, symmetric: bool = False):
    """A tiny SegmentationModule with random weights (and BN statistics), optionally with every
    kernel mirrored left-right, which makes the network commute with a horizontal flip."""
    torch.manual_seed(seed)
    module = SegmentationModule(filters=FILTERS, batch_norm=batch_norm)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
            if symmetric and isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d):
                m.weight.copy_((m.weight + m.weight.flip(-1)) / 2)
        # Centre the logits on inputs like the tests' scans, so masks are neither empty nor full.
        module.eval()
        module.net.head.bias -= module(torch.rand(2, 1, 32, 32)).median()
    return module


def passthrough_module():
    """A network whose logit is 20 * input - 10: it predicts exactly the pixels above 0.5."""
    module = SegmentationModule(filters=FILTERS, batch_norm=False)
    net = module.net
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        net.down[0][0].weight[0, 0, 1, 1] = 1.0  # (conv, relu, conv, relu) without batch norm
        net.down[0][2].weight[0, 0, 1, 1] = 1.0
        # The last decoder block sees [upsampled deeper features (zero), skip]: keep the skip.
        net.up[-1][0].weight[0, FILTERS[0], 1, 1] = 1.0
        net.up[-1][2].weight[0, 0, 1, 1] = 1.0
        net.head.weight[0, 0, 0, 0] = 20.0
        net.head.bias[0] = -10.0
    return module


def save_checkpoint(module, path: Path, preprocess: Preprocess | None = PRE, **keys) -> Path:
    """The parts of a Lightning checkpoint that predict reads."""
    return write_checkpoint(
        path, module.hparams, module.state_dict(), preprocess=preprocess, **keys
    )
