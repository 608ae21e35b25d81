"""Networks as config nodes: building, the size rule asked of the network, what it says of
itself, and checkpoints of every version."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ichseg.checkpoint import HPARAMS_KEY, VERSION_KEY, load_checkpoint, read_checkpoint
from ichseg.errors import IchsegError
from ichseg.models.network import (
    architecture,
    build_net,
    build_on_meta,
    check_input_size,
    parameter_count,
    size_divisor,
)
from ichseg.models.unet import UNet, unet_config
from tests.helpers.checkpoints import FILTERS, random_module, save_checkpoint


class Halves(nn.Module):
    """Pools `levels` times and upsamples back: sizes must be multiples of 2**levels."""

    def __init__(self, levels: int = 2) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
        self.levels = levels

    def forward(self, x):
        y = self.conv(x)
        for _ in range(self.levels):
            y = nn.functional.max_pool2d(y, 2)
        return nn.functional.interpolate(y, scale_factor=2**self.levels)


class Squeezes(nn.Module):
    """Returns one channel too few: not a segmentation network of ichseg's kind."""

    def forward(self, x):
        return x[:, :0]


HERE = __name__


def test_a_node_builds_its_class_with_its_arguments():
    net = build_net({"_target_": "ichseg.models.unet.UNet", "filters": [2, 4], "dropout": 0.1})
    assert isinstance(net, UNet) and net.filters == (2, 4) and net.dropout == 0.1


@pytest.mark.parametrize(
    "node, match",
    [
        ({"filters": [2, 4]}, r"expected a network config \{_target_: module.Class"),
        (
            {"_target_": "no_such_lab.Net"},
            r"cannot import no_such_lab\.Net: no module named no_such_lab",
        ),
        ({"_target_": "ichseg.models.unet.UNet", "filters": []}, "model.module.net.filters"),
        ({"_target_": "collections.OrderedDict"}, "built a OrderedDict, expected a torch.nn"),
    ],
    ids=["no target", "missing class", "constructor refuses", "not a module"],
)
def test_a_node_that_cannot_be_built_is_one_line(node, match):
    with pytest.raises(IchsegError, match=match) as info:
        build_net(node)
    assert "\n" not in str(info.value)


def test_the_size_rule_is_asked_of_the_network():
    # Declared by the class.
    assert size_divisor(UNet(filters=(2, 4, 8))) == 4
    # Found by a probe pass on the meta device for a class that declares nothing.
    probed = build_on_meta({"_target_": f"{HERE}.Halves", "levels": 3})
    assert next(probed.parameters()).is_meta
    assert size_divisor(probed) == 8
    check_input_size(probed, 48)
    with pytest.raises(IchsegError, match=r"data\.size=44 is not allowed: .*Halves.*multiple of 8"):
        check_input_size(probed, 44)
    with pytest.raises(IchsegError, match=r"does not map \(1, 1, H, W\) images"):
        size_divisor(Squeezes())


def test_the_probe_changes_no_batch_statistics():
    net = nn.Sequential(nn.Conv2d(1, 1, 1), nn.BatchNorm2d(1)).train()
    before = net[1].running_mean.clone()
    assert size_divisor(net) == 1
    assert net.training and torch.equal(net[1].running_mean, before)


def test_architecture_is_the_network_first_then_the_config():
    net = UNet(filters=(2, 4), batch_norm="both", dropout=0.2)
    said = architecture(net, {"kernel": "5x5", "pool": "none", "extra": 1})
    assert said["filters"] == [2, 4] and said["kernel"] == "3x3" and "extra" not in said
    assert architecture(Squeezes(), {"kernel": "5x5"}) == {"kernel": "5x5"}


def test_checkpoints_of_both_versions_load_and_others_are_refused(tmp_path):
    module = random_module()
    path = save_checkpoint(module, tmp_path / "v2.ckpt")
    assert read_checkpoint(path)[VERSION_KEY] == 2
    loaded = load_checkpoint(path)
    assert loaded.net_config == dict(module.hparams.net)
    assert parameter_count(loaded.net) == parameter_count(module.net)

    # Version 1: no version key, the U-Net's settings among the hyperparameters.
    raw = read_checkpoint(path)
    del raw[VERSION_KEY]
    net = raw[HPARAMS_KEY].pop("net")
    raw[HPARAMS_KEY].update(filters=net["filters"], batch_norm=True, dropout=net["dropout"])
    torch.save(raw, tmp_path / "v1.ckpt")
    old = load_checkpoint(tmp_path / "v1.ckpt")
    assert old.net_config == unet_config(FILTERS, "both", net["dropout"])
    for name, value in loaded.net.state_dict().items():
        assert torch.equal(old.net.state_dict()[name], value), name

    raw[VERSION_KEY] = 3
    torch.save(raw, tmp_path / "v3.ckpt")
    with pytest.raises(IchsegError, match=r"v3\.ckpt: ichseg_checkpoint_version 3, this ichseg"):
        load_checkpoint(tmp_path / "v3.ckpt")
