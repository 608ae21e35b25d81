"""How much arithmetic a training step is, and how fast this device multiplies matrices."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from omegaconf import DictConfig
from torch.utils.flop_counter import FlopCounterMode

from ichseg.bench.measure import summarize, time_repeats
from ichseg.models.network import build_on_meta


def training_flops_per_image(net_config: Mapping | DictConfig, size: int) -> int:
    """FLOPs of one image's forward + backward at `size`² through the network `net_config`
    describes (`model.module.net`), counted by `torch.utils.flop_counter`.

    Counted on the meta device (shapes only, no arithmetic). The counter covers matrix products
    and convolutions, which are all but a sliver of a convolutional network's arithmetic; the
    optimiser step is not counted (a few FLOPs per weight, not per pixel).
    """
    net = build_on_meta(net_config).train()
    with torch.device("meta"):
        image = torch.empty(1, 1, size, size)
        mask = torch.empty(1, 1, size, size)
        with FlopCounterMode(display=False) as counter:
            (net(image) * mask).sum().backward()
    return int(counter.get_total_flops())


def matmul_ceiling(device: torch.device, dtype: torch.dtype, repeats: int = 5) -> dict:
    """Achieved TFLOP/s of large square matrix products in `dtype`: the device's practical peak.

    n = 8192 on a GPU, 2048 on a CPU (where 8192 would take minutes); each repetition runs
    enough products to last well over the timer's resolution.
    """
    n, products = (8192, 20) if device.type == "cuda" else (2048, 4)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)

    def run() -> None:
        for _ in range(products):
            torch.mm(a, b)

    times = time_repeats(run, device, warmup=1, repeats=repeats)
    tflops = [2 * n**3 * products / t / 1e12 for t in times]
    return {"dtype": str(dtype).removeprefix("torch."), "n": n, "tflops": summarize(tflops)}
