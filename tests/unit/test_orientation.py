"""The training orientation from a volume's affine: every axis order and direction, and refusals."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from ichseg.errors import IchsegError
from ichseg.scans.orientation import reorientation

# The training orientation: array axis 0 towards the left, 1 anterior, 2 superior.
TRAINING = np.array([[-0.5, 0, 0, 10.0], [0, 0.4, 0, -20.0], [0, 0, 5.0, 30.0], [0, 0, 0, 1]])


def stored(volume: np.ndarray, perm: tuple[int, ...], flips: tuple[int, ...]):
    """`volume` (in the training orientation) stored with its axes permuted and flipped, and
    the affine that keeps every voxel at the same place in the world."""
    array, affine = volume.transpose(perm), TRAINING[:, [*perm, 3]].copy()
    for axis, flip in enumerate(flips):
        if flip < 0:
            array = np.flip(array, axis)
            affine[:, 3] += affine[:, axis] * (array.shape[axis] - 1)
            affine[:, axis] *= -1
    return array, affine


@pytest.mark.parametrize(
    ("perm", "flips"),
    list(itertools.product(itertools.permutations(range(3)), itertools.product((1, -1), repeat=3))),
)
def test_every_axis_order_and_direction_comes_back(perm, flips):
    volume = np.random.default_rng(0).random((4, 5, 6))
    array, affine = stored(volume, perm, flips)
    turn = reorientation(affine, "scan.nii")
    out = turn.apply(array)
    # The file's slice order is kept: the slices run as its axial axis runs.
    expected = volume[:, :, ::-1] if flips[perm.index(2)] < 0 else volume
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(turn.undo(out), array)
    assert turn.axial_axis == perm.index(2)
    assert turn.identity == (perm == (0, 1, 2) and flips[:2] == (1, 1))
    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    assert turn.zooms(tuple(zooms)) == pytest.approx((0.5, 0.4, 5.0))
    # The reoriented affine puts every reoriented voxel where the stored one was.
    new = turn.affine(affine, array.shape)
    index = np.array([1, 2, 3])
    source = np.argwhere(array == out[tuple(index)])[0]
    np.testing.assert_allclose(new @ [*index, 1], affine @ [*source, 1])


def test_a_tilted_affine_keeps_its_axial_axis():
    """A 20-degree gantry tilt still has a clear axial axis: no refusal, nothing moved."""
    tilt = np.radians(20)
    affine = TRAINING.copy()
    affine[1:3, 2] = 5.0 * np.array([np.sin(tilt), np.cos(tilt)])
    assert reorientation(affine, "tilted.nii").identity


@pytest.mark.parametrize(
    ("linear", "message"),
    [
        (np.diag([0.5, 0.4, 0.0]), "tilted.nii: the affine is degenerate"),
        (
            np.array(
                [
                    [0.5, 0, 0],
                    [0, 0.4 * np.cos(0.785), -5 * np.sin(0.785)],
                    [0, 0.4 * np.sin(0.785), 5 * np.cos(0.785)],
                ]
            ),
            r"tilted.nii: array axis 1 is 45 degrees from the patient's posterior-anterior axis",
        ),
    ],
)
def test_no_clear_axial_axis_is_refused(linear, message):
    affine = np.eye(4)
    affine[:3, :3] = linear
    with pytest.raises(IchsegError, match=message):
        reorientation(affine, "tilted.nii")
