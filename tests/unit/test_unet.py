"""UNet: shapes, size errors, paper-config parameter counts, layer order and structure, dropout,
init. The authors' baseline (`model=unet`) has batch norm after the second convolution of each
block only (their Keras `double_conv`); D-Unet after both; the textbook U-Net after none."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from ichseg.errors import IchsegError
from ichseg.models.unet import UNet

UNET = {"filters": (64, 128, 256, 512, 1024), "batch_norm": "second", "dropout": 0.0}
PLAIN = {"filters": (64, 128, 256, 512, 1024), "batch_norm": "none", "dropout": 0.0}
DUNET = {"filters": (32, 64, 128, 256, 512), "batch_norm": "both", "dropout": 0.2}
# (BN after the first conv, BN after the second conv) of every block.
NORMS = {"none": (False, False), "second": (False, True), "both": (True, True)}


def closed_form_params(filters, batch_norm, cin=1, cout=1):
    """Parameter count from the architecture description, level by level."""
    k3 = 9
    first, second = NORMS[batch_norm]

    def conv(cin, cout, norm):  # 3x3 conv (bias only without BN) + BN's gamma and beta
        return (cin * k3 + (0 if norm else 1)) * cout + (2 * cout if norm else 0)

    total = 0
    prev = cin
    for f in filters:  # contracting path + bottleneck: two 3x3 convs per level
        total += conv(prev, f, first) + conv(f, f, second)
        prev = f
    for lo, hi in itertools.pairwise(filters):  # expanding path
        total += hi * lo * 4 + lo  # 2x2 transposed conv, with bias
        total += conv(2 * lo, lo, first) + conv(lo, lo, second)
    return total + filters[0] * cout + cout  # 1x1 head with bias


@pytest.mark.parametrize("size", [32, 64])
def test_output_shape_matches_input(size):
    torch.manual_seed(0)
    model = UNet(filters=(4, 8, 16), batch_norm=True, dropout=0.2).eval()
    x = torch.rand(2, 1, size, size)
    assert model(x).shape == (2, 1, size, size)
    two = UNet(filters=(4, 8, 16), in_channels=3, out_channels=2)
    assert two(torch.rand(1, 3, size, size // 2)).shape == (1, 2, size, size // 2)


def test_channels_last_matches_contiguous():
    torch.manual_seed(0)
    model = UNet(filters=(4, 8, 16), batch_norm=True).eval()
    x = torch.rand(2, 1, 32, 32)
    cl = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(cl, model(x), rtol=1e-4, atol=1e-5)
    cl.sum().backward()  # the backward pass must not need .view on non-contiguous tensors


def test_bad_size_names_size_and_divisor():
    model = UNet(filters=(4, 8, 16, 32))
    with pytest.raises(IchsegError, match=r"36x36 must be divisible by 8"):
        model(torch.rand(1, 1, 36, 36))
    with pytest.raises(IchsegError, match=r"expected shape \(B, 1, H, W\)"):
        model(torch.rand(1, 2, 32, 32))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"filters": ()}, "model.module.net.filters"),
        ({"filters": (4, 0)}, "model.module.net.filters"),
        ({"filters": (4, 8.0)}, "model.module.net.filters"),
        ({"dropout": 1.0}, "model.module.net.dropout"),
        ({"dropout": -0.1}, "model.module.net.dropout"),
        ({"in_channels": 0}, "model.module.net.in_channels"),
    ],
)
def test_constructor_validation(kwargs, match):
    with pytest.raises(IchsegError, match=match):
        UNet(**kwargs)


@pytest.mark.parametrize(
    "cfg, expected",
    # The authors' U-Net: the plain count less the 9 second convolutions' biases (1984 channels
    # down, 960 up), plus gamma and beta for them: 31_030_593 - 2944 + 2 x 2944.
    [(UNET, 31_033_537), (PLAIN, 31_030_593), (DUNET, 7_762_465)],
    ids=["unet", "unet_plain", "dunet"],
)
def test_paper_parameter_counts(cfg, expected):
    model = UNet(**cfg)
    n = sum(p.numel() for p in model.parameters())
    assert n == closed_form_params(cfg["filters"], cfg["batch_norm"]) == expected


def _structure(model):
    convs = [m for m in model.modules() if type(m) is nn.Conv2d]
    ups = [m for m in model.modules() if isinstance(m, nn.ConvTranspose2d)]
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout | nn.Dropout2d)]
    return convs, ups, bns, drops


@pytest.mark.parametrize("cfg", [UNET, PLAIN, DUNET], ids=["unet", "unet_plain", "dunet"])
def test_block_layer_order(cfg):
    first, second = NORMS[cfg["batch_norm"]]
    want = [nn.Conv2d, *([nn.BatchNorm2d] * first), nn.ReLU]
    want += [nn.Conv2d, *([nn.BatchNorm2d] * second), nn.ReLU]
    model = UNet(**cfg)
    blocks = [*model.down, *model.up]
    assert len(blocks) == 9
    assert all([type(m) for m in block] == want for block in blocks)
    # The last block's batch norm sits right before the 1x1 head (as in the Keras model).
    assert (type(model.up[-1][-2]) is nn.BatchNorm2d) == second


@pytest.mark.parametrize("cfg", [UNET, PLAIN, DUNET], ids=["unet", "unet_plain", "dunet"])
def test_paper_structure(cfg):
    f = cfg["filters"]
    convs, ups, bns, drops = _structure(UNet(**cfg))
    down = [(1, f[0]), (f[0], f[0])]
    for a, b in itertools.pairwise(f):
        down += [(a, b), (b, b)]
    up = []
    for lo in reversed(f[:-1]):
        up += [(2 * lo, lo), (lo, lo)]
    expected = [*down, *up, (f[0], 1)]
    assert [(c.in_channels, c.out_channels) for c in convs] == expected
    assert [c.kernel_size for c in convs] == [(3, 3)] * 18 + [(1, 1)]
    assert all(c.padding == (1, 1) for c in convs[:-1])
    assert [(u.in_channels, u.out_channels) for u in ups] == [
        (f[4], f[3]),
        (f[3], f[2]),
        (f[2], f[1]),
        (f[1], f[0]),
    ]
    assert all(u.kernel_size == (2, 2) and u.stride == (2, 2) for u in ups)
    assert all(u.bias is not None for u in ups) and convs[-1].bias is not None
    normed = [n for _ in range(9) for n in NORMS[cfg["batch_norm"]]]
    assert [b.num_features for b in bns] == [
        c.out_channels for c, n in zip(convs[:-1], normed, strict=True) if n
    ]
    assert [c.bias is None for c in convs[:-1]] == normed
    if cfg["dropout"]:
        assert len(drops) == 4 and all(type(d) is nn.Dropout and d.p == 0.2 for d in drops)
    else:
        assert drops == []


def test_boolean_batch_norm_of_older_checkpoints():
    assert UNet(filters=(4, 8), batch_norm=True).batch_norm == "both"
    assert UNet(filters=(4, 8), batch_norm=False).batch_norm == "none"
    with pytest.raises(
        IchsegError, match=r"model\.module\.net\.batch_norm: expected one of none, second, both"
    ):
        UNet(filters=(4, 8), batch_norm="first")


def test_dropout_train_vs_eval():
    torch.manual_seed(0)
    model = UNet(filters=(4, 8, 16), dropout=0.5)
    x = torch.rand(2, 1, 32, 32)
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))
    # Without dropout, train mode is deterministic too (no other randomness in the net).
    plain = UNet(filters=(4, 8, 16)).train()
    assert torch.equal(plain(x), plain(x))


def test_he_normal_init():
    torch.manual_seed(0)
    model = UNet(**DUNET)
    checked = 0
    for m in model.modules():
        if type(m) is nn.Conv2d and m.kernel_size == (3, 3):  # the 1x1 head has too few weights
            fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
            std = m.weight.std().item()
            assert abs(std / math.sqrt(2.0 / fan_in) - 1) < 0.1, (m, std)
            checked += 1
        if isinstance(m, nn.ConvTranspose2d):
            # PyTorch/Keras fan-in of a transposed conv: out_channels * 2 * 2.
            std = m.weight.std().item()
            assert abs(std / math.sqrt(2.0 / (m.out_channels * 4)) - 1) < 0.1, (m, std)
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d) and m.bias is not None:
            assert torch.count_nonzero(m.bias) == 0
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    assert checked == 18
