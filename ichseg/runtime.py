"""Where and how a process computes: its device, its precision, PyTorch's process-wide settings.

Training and inference both read "auto" precision, but mean different things by it: a training
job keeps fp32 weights and runs bf16 only as Lightning's mixed precision on a GPU, while
inference casts the whole network, which pays wherever the hardware computes bf16 natively.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from ichseg.config_schema import check_keys
from ichseg.errors import IchsegError

# What `ichseg predict` and `ichseg evaluate` compute in.
INFERENCE_PRECISIONS = ("auto", "fp32", "bf16")


def pick_device(name: str | None = None) -> torch.device:
    """`name` (cpu, cuda, cuda:1, ...); None or "auto": the GPU when present, else the CPU."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise IchsegError(f"--device {name}: expected auto, cpu, cuda or cuda:<index>")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise IchsegError(f"--device {name}: expected a CUDA GPU, found none")
        if device.index is not None and device.index >= count:
            raise IchsegError(
                f"--device {name}: expected cuda:0..cuda:{count - 1}, found {count} GPU(s)"
            )
    return device


def training_precision(precision: str, accelerator: str = "auto") -> str:
    """The Lightning precision of a training job. "auto": bf16 mixed precision when the job
    trains on a GPU that supports it, full fp32 elsewhere, including a CPU job on a machine that
    has a GPU (`trainer.accelerator=cpu`)."""
    if precision != "auto":
        return precision
    on_gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    if on_gpu and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def inference_precision(name: str, device: torch.device) -> str:
    """ "fp32" or "bf16". "auto": bf16 where `device` computes it natively (CUDA bf16, CPU
    AMX/AVX512-BF16)."""
    if name not in INFERENCE_PRECISIONS:
        raise IchsegError(
            f"--precision: expected one of {', '.join(INFERENCE_PRECISIONS)}, found {name!r}"
        )
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        # Private probes of torch.cpu; without them (or without the instructions) bf16 would be
        # emulated, slower than fp32.
        probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
        native = any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)
        return "bf16" if native else "fp32"
    return "fp32"


def set_float32_precision(precision: str) -> None:
    """Internal precision of fp32 matmuls and cuDNN convolutions: "high" and "medium" allow TF32."""
    check_keys({"float32_matmul_precision": precision})
    torch.set_float32_matmul_precision(precision)
    # The networks are convolutions, which that setting leaves alone: "highest" means fp32 here too.
    torch.backends.cudnn.allow_tf32 = precision != "highest"


def apply_torch_settings(cfg: DictConfig) -> None:
    """A job's process-wide PyTorch settings from its top-level `num_threads`,
    `float32_matmul_precision` and `flush_denormal` keys."""
    if cfg.num_threads:
        torch.set_num_threads(int(cfg.num_threads))
    set_float32_precision(cfg.float32_matmul_precision)
    # Subnormal floats (|x| < 1.2e-38) take a slow path on x86 CPUs; a U-Net whose logits run
    # towards -inf under Dice loss produces them and slowed down threefold in our measurement.
    torch.set_flush_denormal(bool(cfg.flush_denormal))
