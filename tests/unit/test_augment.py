"""BatchAugment: identity, exact flips, rotation convention, binary aligned masks, determinism."""

from __future__ import annotations

import time

import pytest
import torch

from ichseg.config_schema import SCHEMA
from ichseg.data.augment import FILL_MODES, BatchAugment
from ichseg.errors import IchsegError


def _blobs(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    """Binary masks (B,1,S,S) with one off-centre disc each, so rotations and flips show."""
    g = torch.Generator().manual_seed(seed)
    centre = size * (0.3 + 0.4 * torch.rand(batch, 2, generator=g))
    radius = size * (0.1 + 0.1 * torch.rand(batch, generator=g))
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    d2 = (xx - centre[:, 0, None, None]) ** 2 + (yy - centre[:, 1, None, None]) ** 2
    return (d2 < radius[:, None, None] ** 2).float().unsqueeze(1)


def _params(batch: int, **given: torch.Tensor) -> dict[str, torch.Tensor]:
    """Identity parameters for `warp`, overridden by `given`."""
    params = {
        "angle": torch.zeros(batch),
        "shift": torch.zeros(batch, 2),
        "shear": torch.zeros(batch),
        "zoom": torch.ones(batch, 2),
        "flip": torch.zeros(batch, dtype=torch.bool),
    }
    return params | given


def test_all_zero_ranges_are_exact_identity() -> None:
    aug = BatchAugment(rotation_deg=0, shift=0, shear_deg=0, zoom=0, hflip=0)
    image = torch.rand(4, 1, 24, 24)
    mask = _blobs(4, 24)
    out_image, out_mask = aug(image, mask)
    assert torch.equal(out_image, image)
    assert torch.equal(out_mask, mask)


def test_p_zero_is_identity_even_with_wide_ranges() -> None:
    aug = BatchAugment(rotation_deg=45, shift=0.3, shear_deg=20, zoom=0.3, hflip=1.0, p=0.0)
    image = torch.rand(4, 1, 24, 24)
    mask = _blobs(4, 24)
    out_image, out_mask = aug(image, mask)
    assert torch.equal(out_image, image)
    assert torch.equal(out_mask, mask)


def test_samples_left_alone_keep_their_pixels_in_a_warped_batch() -> None:
    # One batch mixing an identity sample, a flipped-only one and warped ones: each sample is
    # decided on its own, with nothing asked of the device about the batch as a whole.
    angle = torch.tensor([0.0, 0.0, 30.0, -12.0])
    flip = torch.tensor([False, True, False, True])
    image, mask = torch.rand(4, 1, 24, 24), _blobs(4, 24)
    out_image, out_mask = BatchAugment.warp(image, mask, **_params(4, angle=angle, flip=flip))
    assert torch.equal(out_image[0], image[0]) and torch.equal(out_mask[0], mask[0])
    assert torch.equal(out_image[1], image[1].flip(-1)) and torch.equal(
        out_mask[1], mask[1].flip(-1)
    )
    assert not torch.equal(out_image[2], image[2]) and not torch.equal(out_image[3], image[3])
    # The warped samples are what a batch of them alone gives: one shared grid, per sample.
    alone_image, alone_mask = BatchAugment.warp(
        image[2:], mask[2:], **_params(2, angle=angle[2:], flip=flip[2:])
    )
    assert torch.equal(out_image[2:], alone_image) and torch.equal(out_mask[2:], alone_mask)


def test_flip_matches_torch_flip_exactly_per_sample() -> None:
    image = torch.rand(3, 2, 20, 24)
    mask = _blobs(3, 24)[..., 2:22, :]
    flip = torch.tensor([True, False, True])
    out_image, out_mask = BatchAugment.warp(image, mask, **_params(3, flip=flip))
    expected = torch.where(flip.view(-1, 1, 1, 1), image.flip(-1), image)
    assert torch.equal(out_image, expected)
    assert torch.equal(out_mask, torch.where(flip.view(-1, 1, 1, 1), mask.flip(-1), mask))


def test_hflip_probability_one_flips_every_sample() -> None:
    aug = BatchAugment(rotation_deg=0, shift=0, shear_deg=0, zoom=0, hflip=1.0)
    image = torch.rand(5, 1, 16, 16)
    mask = _blobs(5, 16)
    out_image, out_mask = aug(image, mask)
    assert torch.equal(out_image, image.flip(-1))
    assert torch.equal(out_mask, mask.flip(-1))


def test_plus_90_degrees_is_rot90_counter_clockwise() -> None:
    image = torch.rand(2, 1, 32, 32)
    mask = _blobs(2, 32)
    params = _params(2, angle=torch.full((2,), 90.0))
    out_image, out_mask = BatchAugment.warp(image, mask, **params)
    torch.testing.assert_close(out_image, torch.rot90(image, 1, dims=(-2, -1)), atol=1e-5, rtol=0)
    assert torch.equal(out_mask, torch.rot90(mask, 1, dims=(-2, -1)))


@pytest.mark.parametrize("fill", ["constant", "nearest"])
def test_shift_moves_content_right_and_down_by_fraction_of_size(fill: str) -> None:
    image = torch.rand(2, 1, 16, 20)
    mask = _blobs(2, 20)[..., 2:18, :]
    shift = torch.tensor([[3 / 20, 0.0], [0.0, 2 / 16]])  # 3 px right; 2 px down
    out_image, out_mask = BatchAugment.warp(image, mask, **_params(2, shift=shift), fill=fill)
    torch.testing.assert_close(out_image[0, :, :, 3:], image[0, :, :, :-3], atol=1e-5, rtol=0)
    torch.testing.assert_close(out_image[1, :, 2:], image[1, :, :-2], atol=1e-5, rtol=0)
    assert torch.equal(out_mask[0, :, :, 3:], mask[0, :, :, :-3])
    entered_left, entered_top = out_image[0, :, :, :3], out_image[1, :, :2]
    if fill == "constant":  # air (0) enters from outside the image
        assert entered_left.abs().max() < 1e-5 and entered_top.abs().max() < 1e-5
    else:  # Keras' fill_mode='nearest': the edge pixel repeated
        torch.testing.assert_close(entered_left, image[0, :, :, :1].expand(-1, -1, 3))
        torch.testing.assert_close(entered_top, image[1, :, :1].expand(-1, 2, -1))


def test_zoom_enlarges_content_about_the_centre() -> None:
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 12:20, 12:20] = 1  # 8×8 square centred on the image
    _, out_mask = BatchAugment.warp(mask, mask, **_params(1, zoom=torch.tensor([[2.0, 1.0]])))
    occupied_cols = out_mask[0, 0].amax(dim=0).nonzero().flatten()
    occupied_rows = out_mask[0, 0].amax(dim=1).nonzero().flatten()
    assert occupied_cols.tolist() == list(range(8, 24))  # twice as wide, same centre
    assert occupied_rows.tolist() == list(range(12, 20))  # height unchanged


def test_masks_stay_binary_and_align_with_image() -> None:
    mask = _blobs(16, 64, seed=1)
    image = mask.clone()
    aug = BatchAugment(rotation_deg=30, shift=0.1, shear_deg=10, zoom=0.2, hflip=0.5)
    out_image, out_mask = aug(image, mask, generator=torch.Generator().manual_seed(3))
    assert set(out_mask.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(out_mask, mask)  # something actually moved
    agreement = ((out_image > 0.5) == out_mask.bool()).float().mean()
    assert agreement >= 0.99
    # A misaligned warp (e.g. one flipped and one not) would disagree on far more pixels.
    assert ((out_image.flip(-1) > 0.5) == out_mask.bool()).float().mean() < 0.97


def test_same_generator_seed_gives_same_output() -> None:
    aug = BatchAugment()
    image = torch.rand(8, 1, 32, 32)
    mask = _blobs(8, 32)
    a = aug(image, mask, generator=torch.Generator().manual_seed(7))
    b = aug(image, mask, generator=torch.Generator().manual_seed(7))
    c = aug(image, mask, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_parameters_lie_within_ranges() -> None:
    aug = BatchAugment(rotation_deg=15, shift=0.1, shear_deg=10, zoom=0.1, hflip=0.5)
    p = aug.sample_params(4000, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert p["angle"].abs().max() <= 15 and p["angle"].abs().max() > 14
    assert p["shift"].abs().max() <= 0.1 and p["shear"].abs().max() <= 10
    assert p["zoom"].min() >= 0.9 and p["zoom"].max() <= 1.1
    assert 0.45 < p["flip"].float().mean() < 0.55


def test_channels_last_and_bf16_autocast() -> None:
    mask = _blobs(4, 32).contiguous(memory_format=torch.channels_last)
    image = mask.clone().to(torch.bfloat16)
    aug = BatchAugment(rotation_deg=20)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_image, out_mask = aug(image, mask, generator=torch.Generator().manual_seed(0))
    assert out_image.dtype == torch.bfloat16 and out_mask.dtype == torch.float32
    assert out_mask.is_contiguous(memory_format=torch.channels_last)
    assert set(out_mask.unique().tolist()) <= {0.0, 1.0}
    assert ((out_image.float() > 0.5) == out_mask.bool()).float().mean() >= 0.99


def test_bad_ranges_raise_the_schema_line_naming_the_key() -> None:
    with pytest.raises(IchsegError, match=r"^data\.augment\.zoom=1\.5 is not allowed: .* < 1$"):
        BatchAugment(zoom=1.5)
    with pytest.raises(IchsegError, match=r"^data\.augment\.hflip=2\.0 is not allowed: .* <= 1$"):
        BatchAugment(hflip=2.0)
    with pytest.raises(IchsegError, match=r"^data\.augment\.fill='wrap' is not allowed: "):
        BatchAugment(fill="wrap")
    with pytest.raises(IchsegError, match=r"^data\.augment\.p=-0\.1 is not allowed: .* <= 1$"):
        BatchAugment(p=-0.1)


def test_every_fill_the_schema_allows_has_a_padding_mode() -> None:
    assert tuple(FILL_MODES) == SCHEMA["data.augment.fill"].choices


def test_batch_of_32_at_64px_is_fast_on_cpu() -> None:
    aug = BatchAugment()
    image = torch.rand(32, 1, 64, 64)
    mask = _blobs(32, 64)
    aug(image, mask)  # warm-up
    start = time.perf_counter()
    aug(image, mask)
    assert time.perf_counter() - start < 0.5
