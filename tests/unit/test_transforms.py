"""Transforms: window arithmetic, slice orientation, resizing that keeps masks binary."""

import numpy as np
import pytest
import torch

from ichseg.data.transforms import (
    encode_intensity,
    from_slices,
    prepared_slices,
    resize_images,
    resize_masks,
    to_slices,
    window,
)
from ichseg.errors import IchsegError


def test_window_matches_hand_computation_numpy_and_torch():
    hu = np.array([-1000.0, -20.0, 0.0, 40.0, 70.0, 100.0, 3000.0], dtype=np.float32)
    # level 40 / width 120 -> [-20, 100] maps linearly onto [0, 1].
    expected = np.array([0.0, 0.0, 20 / 120, 0.5, 0.75, 1.0, 1.0], dtype=np.float32)
    out = window(hu)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=1e-7)
    out_t = window(torch.from_numpy(hu.astype(np.int16)))
    assert isinstance(out_t, torch.Tensor) and out_t.dtype == torch.float32
    np.testing.assert_allclose(out_t.numpy(), expected, atol=1e-7)


def test_window_custom_level_width_and_bad_width():
    hu = np.array([[0, 50, 100, 150]], dtype=np.int16)
    np.testing.assert_allclose(window(hu, level=50, width=200), [[0.25, 0.5, 0.75, 1.0]])
    with pytest.raises(
        IchsegError, match=r"^data\.window_width=0 is not allowed: expected a number > 0$"
    ):
        window(hu, width=0)


def test_to_slices_is_rot90_of_each_slice():
    vol = np.arange(3 * 5 * 4).reshape(3, 5, 4)  # H != W so a wrong axis order shows
    out = to_slices(vol)
    assert out.shape == (4, 5, 3) and out.flags["C_CONTIGUOUS"]
    for i in range(4):
        np.testing.assert_array_equal(out[i], np.rot90(vol[:, :, i]))
    # k=1 is counter-clockwise: the top row of the result is the last column of the input.
    np.testing.assert_array_equal(out[0][0], vol[:, -1, 0])


def test_from_slices_inverts_to_slices():
    volume = np.random.default_rng(0).random((5, 7, 3))
    upright = to_slices(volume)
    assert upright.shape == (3, 7, 5)
    assert np.array_equal(upright[1], np.rot90(volume[:, :, 1]))
    assert np.array_equal(from_slices(upright), volume)


def test_prepared_slices_are_the_windowed_upright_8_bit_slices():
    hu = np.random.default_rng(1).uniform(-100, 200, (4, 4, 3))
    # At the slices' own size nothing is resized: window, rotate and round, by hand.
    expected = np.rint(np.clip((hu + 20.0) / 120.0, 0, 1) * 255).astype(np.uint8)
    got = prepared_slices(hu, 40.0, 120.0, 4)
    assert got.dtype == torch.uint8 and got.shape == (3, 4, 4)
    for i in range(3):
        np.testing.assert_array_equal(got[i].numpy(), np.rot90(expected[:, :, i]))
    # Resized, they are the 8-bit rounding of the resized windowed slices.
    windowed = torch.from_numpy(to_slices(window(hu, 40.0, 120.0)))
    resized = (resize_images(windowed, 6) * 255).round().clamp(0, 255).to(torch.uint8)
    assert torch.equal(prepared_slices(hu, 40.0, 120.0, 6), resized)
    # A one-pixel-wide scan converts too.
    assert prepared_slices(hu[:1], 40.0, 120.0, 4).shape == (3, 4, 4)


def test_resize_images_is_noop_at_same_size_and_averages_when_shrinking():
    x = torch.rand(2, 8, 8)
    assert resize_images(x, 8) is x
    flat = torch.full((1, 16, 16), 0.3)
    small = resize_images(flat, 4)
    assert small.shape == (1, 4, 4)
    torch.testing.assert_close(small, torch.full((1, 4, 4), 0.3))
    # Antialiasing: one bright row in four shrinks to its mean (0.25 away from the border);
    # plain bilinear samples between the bright rows and returns 0.
    stripes = (torch.arange(16) % 4 == 0).float()[:, None].expand(16, 16)
    out = resize_images(stripes[None], 4)
    torch.testing.assert_close(out[0, 1:3], torch.full((2, 4), 0.25))


def test_resize_masks_binary_area_kept_and_noop():
    rng = np.random.default_rng(0)
    m = torch.zeros(3, 64, 64, dtype=torch.bool)
    m[0, 10:30, 12:40] = True  # block aligned to the 2x grid: exact
    m[1, 11:30, 13:41] = True  # off-grid block: area within one boundary row/column
    m[2] = torch.from_numpy(rng.random((64, 64)) < 0.02)  # scattered single pixels
    assert torch.equal(resize_masks(m, 64), m)
    out = resize_masks(m, 32)
    assert out.dtype == torch.bool and out.shape == (3, 32, 32)
    # At a 2x reduction "area" is the mean of each 2x2 block: compare all three exactly.
    assert torch.equal(out, m.reshape(3, 32, 2, 32, 2).float().mean((2, 4)) >= 0.5)
    assert torch.equal(out[0], m[0, ::2, ::2])  # the aligned block shrinks exactly
    area_in = m[1].sum().item() / 4
    assert abs(out[1].sum().item() - area_in) <= (19 + 28) / 2 + 1
    with pytest.raises(IchsegError, match="resize_masks"):
        resize_masks(m[0], 32)


def _authors_png_round_trip(slice_uint8: np.ndarray) -> np.ndarray:
    """What the authors' pipeline fed the network: matplotlib `imsave` (viridis, autoscaled)
    of the windowed slice, read back through PIL as grey and divided by 255."""
    import io

    from matplotlib.pyplot import imsave
    from PIL import Image

    buffer = io.BytesIO()
    imsave(buffer, slice_uint8.astype(np.float32), format="png")
    buffer.seek(0)
    return np.asarray(Image.open(buffer).convert("L"), dtype=np.float64) / 255


def test_viridis_png_intensity_is_the_authors_png_round_trip():
    rng = np.random.default_rng(0)
    slices = rng.integers(0, 256, size=(3, 16, 16), dtype=np.uint8)
    slices[0, 0, 0], slices[0, 0, 1] = 0, 255  # full range
    slices[1] = np.clip(slices[1], 40, 90)  # a narrow range is stretched, as imsave does
    slices[2] = 77  # constant: matplotlib maps it to the bottom colour
    got = encode_intensity(torch.from_numpy(slices), "viridis_png").numpy()
    for i in range(len(slices)):
        np.testing.assert_allclose(got[i], _authors_png_round_trip(slices[i]), atol=1e-6)
    assert got.min() == pytest.approx(30 / 255) and got.max() == pytest.approx(215 / 255)


def test_linear_intensity_and_bad_encodings():
    slices = torch.arange(256, dtype=torch.uint8).view(1, 16, 16)
    np.testing.assert_allclose(
        encode_intensity(slices).numpy().ravel(), np.arange(256) / 255, atol=1e-7
    )
    with pytest.raises(
        IchsegError,
        match=r"^data\.intensity='jet' is not allowed: expected one of linear, viridis_png$",
    ):
        encode_intensity(slices, "jet")
    with pytest.raises(IchsegError, match="uint8"):
        encode_intensity(slices.float(), "linear")
