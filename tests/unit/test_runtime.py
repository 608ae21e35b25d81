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
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(IchsegError, match=r"--device cuda:1: expected a CUDA GPU, found none"):
        pick_device("cuda:1")


# Names torch parses but ichseg cannot compute on (mps: not in this build; meta: no data), and
# names torch does not parse at all.
@pytest.mark.parametrize("name", ["tpu", "foo", "", "mps", "meta", "xla", "cuda:x"])
def test_a_device_other_than_cpu_or_cuda_is_one_line(name):
    with pytest.raises(IchsegError) as err:
        pick_device(name)
    assert str(err.value) == f"--device {name}: expected auto, cpu, cuda or cuda:<index>"


def test_a_gpu_index_past_the_last_gpu_is_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert pick_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(
        IchsegError, match=r"^--device cuda:2: expected cuda:0..cuda:1, found 2 GPU"
    ):
        pick_device("cuda:2")


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
