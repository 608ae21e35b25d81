"""Time one training step per architecture: `python -m ichseg.bench_train [--size 256]`.

A step is what a training batch costs inside a job: the batched on-device augmentation, the
LightningModule's training step (forward, soft Dice loss, metric accumulation), backward and Adam,
at the paper's widths unless `--width` says otherwise. Prints the median seconds per step over
`--steps` timed steps after `--warmup` untimed ones, images per second and the spread, with the
load average: other processes on the machine slow every figure.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from ichseg.config import scale_filters
from ichseg.data.augment import BatchAugment
from ichseg.training.module import SegmentationModule

ARCHITECTURES = {
    "unet": ((64, 128, 256, 512, 1024), False, 0.0),
    "dunet": ((32, 64, 128, 256, 512), True, 0.2),
}


def time_steps(
    name: str, size: int, batch: int, width: float, warmup: int, steps: int, device: str
) -> list[float]:
    """Seconds of each timed training step of architecture `name` on random data."""
    filters, batch_norm, dropout = ARCHITECTURES[name]
    module = SegmentationModule(
        filters=scale_filters(list(filters), width), batch_norm=batch_norm, dropout=dropout
    ).to(device)
    module.train()
    optimizer = module.configure_optimizers()
    augment = BatchAugment()
    generator = torch.Generator(device=device).manual_seed(0)
    image = torch.rand(batch, 1, size, size, device=device, generator=generator)
    mask = (torch.rand(batch, 1, size, size, device=device, generator=generator) > 0.95).float()
    times = []
    for i in range(warmup + steps):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        aug_image, aug_mask = augment(image, mask, generator=generator)
        loss = module.training_step({"image": aug_image, "mask": aug_mask}, i)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> None:
    """Print the step time and throughput of U-Net and D-Unet."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--width", type=float, default=1.0, help="filter multiplier")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    print(
        f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    for name in ARCHITECTURES:
        times = time_steps(
            name, args.size, args.batch, args.width, args.warmup, args.steps, args.device
        )
        median = statistics.median(times)
        print(
            f"{name}: {args.size}x{args.size}, batch {args.batch}, width {args.width}: "
            f"median {median:.3f} s/step over {len(times)} steps after {args.warmup} warm-up "
            f"-> {args.batch / median:.2f} images/s (spread {min(times):.3f}-{max(times):.3f} s)"
        )


if __name__ == "__main__":
    main()
