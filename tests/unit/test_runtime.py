"""Device and inference-precision choice: what "auto" picks, and one line for a bad name."""

from __future__ import annotations

import pytest
import torch

from ichseg.errors import IchsegError
from ichseg.runtime import inference_precision, pick_device


@pytest.mark.parametrize("name", [None, "auto"])
@pytest.mark.parametrize("gpu", [True, False])
def test_auto_device_is_the_gpu_when_present(monkeypatch, name, gpu):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    assert pick_device(name) == torch.device("cuda" if gpu else "cpu")


def test_named_device_is_checked(monkeypatch):
    assert pick_device("cpu") == torch.device("cpu")
    with pytest.raises(IchsegError, match=r"^--device tpu: "):
        pick_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(IchsegError, match=r"--device cuda:1: expected a CUDA GPU, found none"):
        pick_device("cuda:1")


@pytest.mark.parametrize(("bf16", "expected"), [(True, "bf16"), (False, "fp32")])
def test_auto_inference_precision_on_a_gpu_follows_its_bf16_support(monkeypatch, bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16)
    assert inference_precision("auto", torch.device("cuda")) == expected
    assert inference_precision("fp32", torch.device("cuda")) == "fp32"


def test_auto_inference_precision_on_cpu_needs_native_bf16(monkeypatch):
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        monkeypatch.setattr(torch.cpu, probe, lambda: False, raising=False)
    assert inference_precision("auto", torch.device("cpu")) == "fp32"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert inference_precision("auto", torch.device("cpu")) == "bf16"
    assert inference_precision("auto", torch.device("meta")) == "fp32"


def test_bad_inference_precision_is_one_line():
    with pytest.raises(IchsegError, match=r"--precision: expected one of auto, fp32, bf16"):
        inference_precision("fp16", torch.device("cpu"))
