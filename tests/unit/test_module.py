"""SegmentationModule's compile flag: same checkpoints, same training step as eager."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf

from ichseg.checkpoint import Preprocess, load_checkpoint, write_checkpoint
from ichseg.errors import IchsegError
from ichseg.jobs.config import check_resume_checkpoint
from ichseg.models.unet import unet_config
from ichseg.training.module import SegmentationModule

FILTERS = (4, 8)


def _is_compiled(module: SegmentationModule) -> bool:
    # nn.Module.compile sets this in place; nothing is compiled before the first call.
    return module.net._compiled_call_impl is not None


def test_compiled_module_saves_the_same_checkpoint_and_loads_without_compiling(
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    compiled = SegmentationModule(net=unet_config(FILTERS, True), compile=True)
    plain = SegmentationModule(net=unet_config(FILTERS, True))
    assert _is_compiled(compiled) and not _is_compiled(plain)
    assert list(compiled.state_dict()) == list(plain.state_dict())

    path = tmp_path / "compiled.ckpt"
    write_checkpoint(
        path,
        compiled.hparams,
        compiled.state_dict(),
        preprocess=Preprocess(size=32, level=40.0, width=120.0),
        extra={"pytorch-lightning_version": pl.__version__},
    )
    # Lightning restores it with compile=False; inference builds the bare network.
    loaded = SegmentationModule.load_from_checkpoint(path, map_location="cpu", compile=False)
    assert not _is_compiled(loaded)
    for name, value in compiled.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    checkpoint = load_checkpoint(path)
    assert checkpoint.net_config == unet_config(FILTERS, "both")
    for name, value in compiled.net.state_dict().items():
        assert torch.equal(checkpoint.net.state_dict()[name], value), name

    # A job may switch compile on or off and still resume; a changed result setting is refused.
    wanted = {**compiled.hparams, "compile": False}
    check_resume_checkpoint(path, OmegaConf.create(wanted))
    with pytest.raises(IchsegError, match=r"model\.module lr 0\.0001 != 0\.1"):
        check_resume_checkpoint(path, OmegaConf.create({**wanted, "lr": 0.1}))


@pytest.mark.slow
def test_compiled_training_step_matches_eager() -> None:
    """One training step and Adam step, compiled (about 20 s with a cold Inductor cache) and not."""
    torch.manual_seed(0)
    eager = SegmentationModule(net=unet_config(FILTERS, True), lr=1e-3)
    compiled = SegmentationModule(net=unet_config(FILTERS, True), lr=1e-3, compile=True)
    compiled.load_state_dict(eager.state_dict())
    image = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    batch = {"image": image, "mask": (image > 0.7).float()}
    results = []
    for module in (eager, compiled):
        optimizer = module.configure_optimizers()["optimizer"]
        loss = module.training_step(batch, 0)
        loss.backward()
        grads = {name: p.grad.clone() for name, p in module.net.named_parameters()}
        optimizer.step()
        results.append((loss.detach(), grads, dict(module.net.named_parameters())))
    (loss, grads, params), (c_loss, c_grads, c_params) = results
    # Both run in fp32; Inductor fuses kernels and reorders sums, which moves results by fp32
    # rounding (measured: 2e-5 relative in the gradients, 3e-8 in the weights after a 1e-3 step).
    torch.testing.assert_close(c_loss, loss, rtol=1e-5, atol=1e-6)
    for name, grad in grads.items():
        assert ((c_grads[name] - grad).norm() / grad.norm()).item() < 1e-3, name
        torch.testing.assert_close(c_params[name], params[name], rtol=0, atol=1e-5)


@pytest.mark.parametrize("threshold", [0.0, 1.0, 1.5])
def test_threshold_outside_zero_one_is_refused(threshold):
    with pytest.raises(
        IchsegError,
        match=rf"^model\.module\.threshold={threshold} is not allowed: expected a number > 0 "
        r"and < 1$",
    ):
        SegmentationModule(net=unet_config((4, 8)), threshold=threshold)
