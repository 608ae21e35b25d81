"""Batched random affine augmentation on the device of the batch (the paper's Keras generator).

The paper augments on the fly with Keras' `ImageDataGenerator`: rotations, horizontal flips,
width and height shifts, shear ("cuts") and zoom. Here every sample of a batch gets its own
parameters, drawn in one `torch.rand` call, and the whole batch is warped by one
`affine_grid` + `grid_sample` call: no per-sample Python loop, so it runs on the GPU next to
the model.

Parameter convention (pixel coordinates centred on the image, x to the right, y down, so the
transform is the same on square and non-square images):

- `angle`: degrees; positive turns the content counter-clockwise as displayed, so +90 equals
  `torch.rot90(x, 1, dims=(-2, -1))` (and `np.rot90`).
- `shift`: `(tx, ty)` as fractions of width and height; positive moves the content right / down.
- `shear`: degrees; horizontal shear `x' = x + tan(shear) * y` (rows further down move right).
- `zoom`: `(zx, zy)` magnification of the content; > 1 enlarges it. x and y are drawn
  independently, as Keras does.
- `flip`: mirror left-right.

`warp` takes explicit parameters (tests, figures); it is not named `apply` because that would
shadow `nn.Module.apply`, which recursion over a module tree relies on.

Forward map of the content: flip first, then rotation, shear, zoom, and shift last
(`p_out = Z · Sh · R · flip(p_in) + t`). The flip is done by index reversal (exact), the rest is
one 2×3 matrix per sample. Images are sampled bilinearly, masks by nearest neighbour so they stay
exactly binary and on the same grid as the image. Pixels that come from outside the image take
`fill`: "nearest" repeats the edge pixel (Keras' `fill_mode='nearest'`, the authors' setting),
"constant" pads with zeros (air in a windowed slice, an empty label in a mask).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ichseg.config_schema import PROBABILITY, check_section, check_value

# Columns of the single `torch.rand(B, 8)` draw.
_ANGLE, _TX, _TY, _SHEAR, _ZX, _ZY, _FLIP, _APPLY = range(8)
# `fill` names (Keras' fill_mode, the schema's `data.augment.fill`) -> grid_sample padding modes.
FILL_MODES = {"nearest": "border", "constant": "zeros"}


class BatchAugment(nn.Module):
    """Random rotation, shift, shear, zoom and horizontal flip, one draw per sample."""

    def __init__(
        self,
        rotation_deg: float = 15.0,
        shift: float = 0.1,
        shear_deg: float = 10.0,
        zoom: float = 0.1,
        hflip: float = 0.5,
        p: float = 1.0,
        fill: str = "nearest",
    ) -> None:
        super().__init__()
        check_section(
            "data.augment",
            {
                "rotation_deg": rotation_deg,
                "shift": shift,
                "shear_deg": shear_deg,
                "zoom": zoom,
                "hflip": hflip,
                "fill": fill,
            },
        )
        # `p` is set only in code (the config applies every draw): a probability all the same.
        check_value("data.augment.p", p, PROBABILITY)
        self.rotation_deg = float(rotation_deg)
        self.shift = float(shift)
        self.shear_deg = float(shear_deg)
        self.zoom = float(zoom)
        self.hflip = float(hflip)
        self.p = float(p)
        self.fill = fill

    def extra_repr(self) -> str:
        """Show the ranges when the module is printed."""
        return (
            f"rotation_deg={self.rotation_deg}, shift={self.shift}, shear_deg={self.shear_deg}, "
            f"zoom={self.zoom}, hflip={self.hflip}, p={self.p}, fill={self.fill}"
        )

    def sample_params(
        self, batch: int, device: torch.device, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """Draw per-sample parameters (uniform in ± range) in the convention of `warp`."""
        # Draw where the generator lives so a CPU generator also drives a CUDA batch.
        draw_device = generator.device if generator is not None else device
        u = torch.rand(batch, 8, generator=generator, device=draw_device).to(device)
        keep = u[:, _APPLY:] < self.p
        # Every symmetric range in one expression: each value is (2u - 1) * half_range, as if
        # drawn column by column, in a handful of tensor operations instead of several per column.
        half_ranges = torch.tensor(
            [self.rotation_deg, self.shift, self.shift, self.shear_deg, self.zoom, self.zoom],
            dtype=u.dtype,
            device=device,
        )
        sym = ((2 * u[:, :_FLIP] - 1) * half_ranges).where(keep, 0.0)
        return {
            "angle": sym[:, _ANGLE],
            "shift": sym[:, _TX : _TY + 1],
            "shear": sym[:, _SHEAR],
            "zoom": 1 + sym[:, _ZX : _ZY + 1],
            "flip": (u[:, _FLIP] < self.hflip) & keep[:, 0],
        }

    def forward(
        self, image: Tensor, mask: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Augment `image` (B,C,H,W) and `mask` (B,1,H,W) with the same random draw per sample."""
        params = self.sample_params(image.shape[0], image.device, generator)
        return self.warp(image, mask, **params, fill=self.fill)

    @staticmethod
    def warp(
        image: Tensor,
        mask: Tensor,
        angle: Tensor,
        shift: Tensor,
        shear: Tensor,
        zoom: Tensor,
        flip: Tensor,
        fill: str = "nearest",
    ) -> tuple[Tensor, Tensor]:
        """Warp with given parameters: angle, shear (B,) degrees; shift, zoom (B,2); flip (B,);
        `fill` for pixels from outside the image (see the module doc)."""
        if image.dim() != 4 or mask.dim() != 4 or image.shape[0] != mask.shape[0]:
            raise ValueError(
                f"expected image (B,C,H,W) and mask (B,1,H,W), got {tuple(image.shape)} "
                f"and {tuple(mask.shape)}"
            )
        if image.shape[-2:] != mask.shape[-2:]:
            raise ValueError(f"image {tuple(image.shape)} and mask {tuple(mask.shape)} differ")
        bshape = (-1,) + (1,) * (image.dim() - 1)
        flip = flip.to(image.device).view(bshape)
        image = torch.where(flip, image.flip(-1), image)
        mask = torch.where(flip, mask.flip(-1), mask)

        theta = _theta(angle, shift, shear, zoom, image.shape[-2], image.shape[-1], image.device)
        # A sample whose matrix is exactly the identity keeps its pixels bit for bit. Decided per
        # sample on the device, without asking whether any sample is warped: that question would
        # wait for the GPU on every step.
        eye = torch.eye(2, 3, device=image.device)
        warped = ~(theta == eye).flatten(1).all(dim=1).view(bshape)
        # One sampling grid for image and mask (it depends on the batch and the size only).
        with torch.autocast(device_type=image.device.type, enabled=False):
            grid = F.affine_grid(theta, [image.shape[0], 1, *image.shape[-2:]], align_corners=False)
        padding = FILL_MODES[fill]
        image = torch.where(warped, _resample(image, grid, "bilinear", padding), image)
        mask = torch.where(warped, _resample(mask, grid, "nearest", padding), mask)
        return image, mask


def _theta(
    angle: Tensor,
    shift: Tensor,
    shear: Tensor,
    zoom: Tensor,
    height: int,
    width: int,
    device: torch.device,
) -> Tensor:
    """Sampling matrices (B,2,3) for `affine_grid`: output -> input in normalised coordinates."""
    f32 = {"device": device, "dtype": torch.float32}
    a = torch.deg2rad(angle.to(**f32))
    sh = torch.tan(torch.deg2rad(shear.to(**f32)))
    zoom = zoom.to(**f32)
    shift = shift.to(**f32)
    cos, sin, one, zero = torch.cos(a), torch.sin(a), torch.ones_like(a), torch.zeros_like(a)
    # Inverses of the forward maps, in centred pixel coordinates with y down.
    rot_inv = torch.stack([cos, -sin, sin, cos], dim=1).view(-1, 2, 2)
    shear_inv = torch.stack([one, -sh, zero, one], dim=1).view(-1, 2, 2)
    zoom_inv = torch.diag_embed(1 / zoom)
    lin_pix = rot_inv @ shear_inv @ zoom_inv
    # Normalised coordinates are pixels scaled by (W/2, H/2): conjugate so non-square images
    # rotate rigidly rather than in the stretched normalised frame.
    scale = torch.tensor([width / 2, height / 2], **f32)
    lin = lin_pix * scale.view(1, 1, 2) / scale.view(1, 2, 1)
    # p_in = lin (p_out - t); a shift of a fraction f of the size is 2 f in normalised units.
    trans = -(lin @ (2 * shift).unsqueeze(-1))
    return torch.cat([lin, trans], dim=2)


def _resample(x: Tensor, grid: Tensor, mode: str, padding: str) -> Tensor:
    """Sample `x` at `grid` in float32, returning x's dtype and memory format."""
    channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
    # The grid must stay fp32 under bf16 autocast: bf16 coordinates are off by whole pixels.
    with torch.autocast(device_type=x.device.type, enabled=False):
        out = F.grid_sample(
            x.float(), grid, mode=mode, padding_mode=padding, align_corners=False
        ).to(x.dtype)
    if channels_last:
        out = out.contiguous(memory_format=torch.channels_last)
    return out
