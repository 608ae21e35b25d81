"""One U-Net class; the paper's U-Net and D-Unet are configurations of it.

- ``model=unet``:  filters (64, 128, 256, 512, 1024), batch norm after the second convolution of
  every block (``batch_norm="second"``), no dropout: the baseline as the authors' Keras code
  built it (``model_utils.py`` ``double_conv``, whose second BatchNormalization is unconditional).
- ``model=dunet``: filters (32, 64, 128, 256, 512), batch norm after both convolutions
  (``"both"``), dropout 0.2.
- ``model=unet_plain``: the textbook U-Net of the paper's text, no batch norm (``"none"``).

Every level has two padded 3×3 convolutions, each followed by BatchNorm2d where ``batch_norm``
places one, and ReLU. The contracting path halves the size with 2×2 max pooling, followed by
element-wise dropout (``nn.Dropout``, as Keras' ``Dropout(0.2)``) after every pooling when
``dropout > 0``. The last ``filters`` entry is the bottleneck. The expanding path uses 2×2
stride-2 transposed convolutions that halve the channels, concatenates the skip connection, then
the same two convolutions. A final 1×1 convolution gives logits (the sigmoid is in the loss).

Convolutions followed by batch norm have no bias: BN subtracts the channel mean, so such a bias
is redundant (Keras' layers keep it; it only adds parameters). Every other convolution has one.
The transposed convolutions and the final 1×1 convolution always have one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ichseg.errors import IchsegError

# Where each block's two convolutions get a BatchNorm2d: (after the first, after the second).
BATCH_NORM_MODES = {"none": (False, False), "second": (False, True), "both": (True, True)}
BATCH_NORM_TEXT = {
    "none": "none",
    "second": "after the second convolution of every block",
    "both": "after both convolutions of every block",
}


def batch_norm_mode(batch_norm: str | bool) -> str:
    """The placement name for `batch_norm`; booleans (older checkpoints) mean "both" / "none"."""
    if isinstance(batch_norm, bool):
        return "both" if batch_norm else "none"
    if batch_norm not in BATCH_NORM_MODES:
        raise IchsegError(
            f"model.module.net.batch_norm: expected one of {', '.join(BATCH_NORM_MODES)}, "
            f"found {batch_norm!r}"
        )
    return batch_norm


def _double_conv(in_ch: int, out_ch: int, batch_norm: str) -> nn.Sequential:
    """Two padded 3×3 convolutions, each followed by BatchNorm2d where `batch_norm` puts one,
    and ReLU."""
    layers: list[nn.Module] = []
    for cin, norm in zip((in_ch, out_ch), BATCH_NORM_MODES[batch_norm], strict=True):
        layers.append(nn.Conv2d(cin, out_ch, kernel_size=3, padding=1, bias=not norm))
        if norm:
            layers.append(nn.BatchNorm2d(out_ch))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class UNet(nn.Module):
    """U-Net returning logits (B, out_channels, H, W); H and W must be divisible by
    `size_divisor` (2**(levels - 1))."""

    def __init__(
        self,
        filters: Sequence[int] = (64, 128, 256, 512, 1024),
        in_channels: int = 1,
        out_channels: int = 1,
        batch_norm: str | bool = "none",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        filters = tuple(filters)
        batch_norm = batch_norm_mode(batch_norm)
        if not filters or not all(
            isinstance(f, int) and not isinstance(f, bool) and f > 0 for f in filters
        ):
            raise IchsegError(
                "model.module.net.filters: expected a non-empty list of positive ints, "
                f"found {filters!r}"
            )
        for key, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise IchsegError(
                    f"model.module.net.{key}: expected a positive int, found {value!r}"
                )
        if not 0.0 <= float(dropout) < 1.0:
            raise IchsegError(
                f"model.module.net.dropout: expected 0 <= dropout < 1, found {dropout!r}"
            )

        self.filters = filters
        self.batch_norm = batch_norm
        self.dropout = float(dropout)
        self.in_channels = in_channels
        # H and W must be multiples of it (`ichseg.models.network.size_divisor` reads it).
        self.size_divisor = 2 ** (len(filters) - 1)

        self.down = nn.ModuleList()
        cin = in_channels
        for f in filters:
            self.down.append(_double_conv(cin, f, batch_norm))
            cin = f
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        # One Dropout per pooling (none when dropout == 0, so U-Net has no no-op modules).
        self.drop = nn.ModuleList(
            nn.Dropout(float(dropout)) for _ in filters[:-1] if float(dropout) > 0
        )

        self.upconv = nn.ModuleList()
        self.up = nn.ModuleList()
        for f_low, f_high in zip(reversed(filters[:-1]), reversed(filters[1:]), strict=True):
            self.upconv.append(nn.ConvTranspose2d(f_high, f_low, kernel_size=2, stride=2))
            self.up.append(_double_conv(2 * f_low, f_low, batch_norm))
        self.head = nn.Conv2d(filters[0], out_channels, kernel_size=1)
        self.reset_parameters()

    @property
    def architecture(self) -> dict:
        """Table 1's architecture columns (`ichseg.models.network.architecture`)."""
        return {
            "filters": list(self.filters),
            "kernel": "3x3",
            "pool": "2x2 max",
            "dropout": self.dropout,
            "batch_norm": BATCH_NORM_TEXT[self.batch_norm],
        }

    def reset_parameters(self) -> None:
        """He-normal (fan-in, ReLU gain) conv weights, zero biases, BN weight 1 and bias 0.

        PyTorch's default init left a plain (no-BN) U-Net stuck at Dice loss ≈ 0.995. For the
        2×2 stride-2 transposed convolutions PyTorch takes fan-in from weight dim 1
        (out·2·2 = 2·in), as Keras' he_normal does; the resulting variance 1/in is the
        variance-preserving one for that linear (no ReLU) upsampling, where each output pixel
        sees exactly `in` inputs.
        """
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map images (B, in_channels, H, W) to logits (B, out_channels, H, W)."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise IchsegError(
                f"UNet input: expected shape (B, {self.in_channels}, H, W), found {tuple(x.shape)}"
            )
        h, w = x.shape[-2:]
        if h % self.size_divisor or w % self.size_divisor:
            raise IchsegError(
                f"UNet input: image size {h}x{w} must be divisible by {self.size_divisor} "
                f"(2**{len(self.filters) - 1} for {len(self.filters)} levels)"
            )
        skips = []
        for i, block in enumerate(self.down[:-1]):
            x = block(x)
            skips.append(x)
            x = self.pool(x)
            if self.drop:
                x = self.drop[i](x)
        x = self.down[-1](x)
        for upconv, block, skip in zip(self.upconv, self.up, reversed(skips), strict=True):
            x = block(torch.cat([upconv(x), skip], dim=1))
        return self.head(x)


def unet_config(
    filters: Sequence[int], batch_norm: str | bool = "none", dropout: float = 0.0
) -> dict:
    """The `model.module.net` node of a UNet (what checkpoints written before nets were config
    nodes mean by their filters, batch_norm and dropout)."""
    return {
        "_target_": f"{UNet.__module__}.{UNet.__qualname__}",
        "filters": [int(f) for f in filters],
        "batch_norm": batch_norm_mode(batch_norm),
        "dropout": float(dropout),
    }
