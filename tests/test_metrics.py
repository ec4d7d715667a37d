"""Metrics against values computed by hand on tiny synthetic inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from cameras.apps.metrics import (
    area_under_curve,
    blur,
    box_mask,
    deletion,
    energy_pointing_game,
    insertion,
    map_density,
    max_point,
    pointing_game,
    pointing_hit,
)
from cameras.apps.metrics.insertion import saliency_ranks, step_counts


class HalfPrep:
    """Normalisation with mean 0.5 and std 0.5: input = 2 * pixel - 1."""

    def normalise(self, pixels):
        return (pixels - 0.5) / 0.5

    def denormalise(self, x):
        return x * 0.5 + 0.5


class RedMeanModel(nn.Module):
    """Two classes whose softmax probability of class 0 is the mean red pixel value m.

    Logits are log(m) and log(1 - m), so softmax gives exactly (m, 1 - m). The input is
    normalised by HalfPrep, so the model undoes it first: every metric that builds
    images must go through pixel space correctly for the hand values to come out.
    """

    def __init__(self, normalised: bool = True) -> None:
        super().__init__()
        self.normalised = normalised
        self.dummy = nn.Parameter(torch.zeros(()))  # gives the model a device

    def forward(self, x):
        pixels = x * 0.5 + 0.5 if self.normalised else x
        m = pixels[:, 0].flatten(1).mean(1).clamp(1e-9, 1 - 1e-9)
        return torch.stack([m.log(), (1 - m).log()], 1) + self.dummy


RED = torch.tensor([[0.2, 0.4], [0.6, 0.8]])


def image_batch(red=RED, normalised=True) -> torch.Tensor:
    """(1, 3, 2, 2): the red channel as given, green and blue 0.5; normalised by HalfPrep."""
    pixels = torch.stack([red, torch.full_like(red, 0.5), torch.full_like(red, 0.5)])[None]
    return HalfPrep().normalise(pixels) if normalised else pixels


# -------------------------------------------------------------------------- pointing game


def spot(height, width, row, column):
    values = np.zeros((height, width), np.float32)
    values[row, column] = 1.0
    return values


def test_pointing_tolerance_is_strict_like_torchray():
    # Maximum at row 5, column 30; the box covers columns 0..15: distance exactly 15.
    saliency = spot(40, 40, 5, 30)
    assert not pointing_hit(saliency, [(0, 0, 16, 16)], tolerance=15)
    # One more column (0..16): distance 14 < 15.
    assert pointing_hit(saliency, [(0, 0, 17, 16)], tolerance=15)


def test_pointing_diagonal_distance():
    saliency = spot(40, 40, 20, 20)
    # Box pixels 0..9: nearest (9, 9), distance^2 = 11^2 + 11^2 = 242 >= 225.
    assert not pointing_hit(saliency, [(0, 0, 10, 10)])
    # Box pixels 0..10: nearest (10, 10), distance^2 = 200 < 225.
    assert pointing_hit(saliency, [(0, 0, 11, 11)])


def test_pointing_inside_box_hits_even_with_zero_tolerance():
    saliency = spot(10, 10, 4, 4)
    assert pointing_hit(saliency, [(4, 4, 5, 5)], tolerance=0)
    assert not pointing_hit(saliency, [(5, 4, 6, 5)], tolerance=0)


def test_pointing_fractional_box_covers_overlapped_pixels():
    # (0.5, 0, 15.2, 16) overlaps columns 0..15, so a point at column 30 is 15 away.
    saliency = spot(40, 40, 5, 30)
    assert not pointing_hit(saliency, [(0.5, 0, 15.2, 16)])
    assert pointing_hit(saliency, [(0.5, 0, 16.01, 16)])  # now overlaps column 16


def test_pointing_any_box_and_constant_map():
    saliency = spot(40, 40, 30, 30)
    assert pointing_hit(saliency, [(0, 0, 5, 5), (28, 28, 32, 32)])
    assert not pointing_hit(np.zeros((10, 10)), [(0, 0, 10, 10)])
    assert max_point(np.ones((3, 3))) is None
    assert max_point(torch.tensor([[0.0, 1.0], [1.0, 0.0]])) == (0, 1)  # first in row-major


def test_pointing_game_batch_of_different_sizes_and_tensors():
    maps = [spot(20, 30, 2, 2), spot(50, 40, 45, 35)]
    boxes = [[(0, 0, 3, 3)], [(0, 0, 5, 5)]]
    np.testing.assert_array_equal(pointing_game(maps, boxes), [1.0, 0.0])
    stacked = torch.from_numpy(np.stack([spot(8, 8, 0, 0), spot(8, 8, 7, 7)]))
    np.testing.assert_array_equal(pointing_game(stacked, [[(0, 0, 1, 1)]] * 2, 3), [1.0, 0.0])
    with pytest.raises(ValueError, match="box lists"):
        pointing_game(maps, boxes[:1])


def test_energy_pointing_game_by_hand():
    saliency = np.arange(1, 17, dtype=np.float64).reshape(4, 4)  # total 136
    # (0, 0, 2, 2) holds 1 + 2 + 5 + 6 = 14.
    np.testing.assert_allclose(energy_pointing_game([saliency], [[(0, 0, 2, 2)]]), [14 / 136])
    # Overlapping boxes count their union once: 14 + 7 + 10 + 11 = 42.
    both = [(0, 0, 2, 2), (1, 1, 3, 3)]
    np.testing.assert_allclose(energy_pointing_game([saliency], [both]), [42 / 136])
    np.testing.assert_allclose(energy_pointing_game([np.zeros((4, 4))], [both]), [0.0])
    assert box_mask(both, 4, 4).sum() == 7


# -------------------------------------------------------------------------- map density


def test_map_density_by_hand():
    maps = torch.tensor([[[1.0, 0.5], [0.0, 0.0]]])
    # I * Psi: red (0.2, 0.2, 0, 0), mean 0.1; mean(Psi) = 0.375.
    # I * (1 - Psi): red (0, 0.2, 0.6, 0.8), mean 0.4; mean(1 - Psi) = 0.625.
    plus, minus = map_density(RedMeanModel(), image_batch(), maps, [0], HalfPrep())
    assert plus.item() == pytest.approx(0.1 / 0.375, rel=1e-5)
    assert minus.item() == pytest.approx(0.4 / 0.625, rel=1e-5)


def test_map_density_batched_matches_one_by_one_and_nan_when_undefined():
    x = torch.cat([image_batch(), image_batch(RED.flip(0))])
    maps = torch.stack(
        [torch.tensor([[1.0, 0.5], [0.0, 0.0]]), torch.tensor([[0.2, 0.4], [0.9, 0.1]])]
    )
    plus, minus = map_density(RedMeanModel(), x, maps, [0, 1], HalfPrep(), batch_size=1)
    for b in range(2):
        p1, m1 = map_density(RedMeanModel(), x[b : b + 1], maps[b : b + 1], [[0, 1][b]], HalfPrep())
        assert plus[b].item() == pytest.approx(p1.item())
        assert minus[b].item() == pytest.approx(m1.item())
    zero, _ = map_density(RedMeanModel(), image_batch(), torch.zeros(1, 2, 2), [0], HalfPrep())
    _, one = map_density(RedMeanModel(), image_batch(), torch.ones(1, 2, 2), [0], HalfPrep())
    assert math.isnan(zero.item()) and math.isnan(one.item())
    with pytest.raises(ValueError, match="maps must be"):
        map_density(RedMeanModel(), x, maps[:1], [0, 1], HalfPrep())


def test_map_density_restores_training_flag():
    model = RedMeanModel().train()
    map_density(model, image_batch(), torch.full((1, 2, 2), 0.5), [0], HalfPrep())
    assert model.training


# -------------------------------------------------------------------- insertion / deletion


MAP = torch.tensor([[[0.1, 0.9], [0.5, 0.3]]])  # order: (0,1) 0.4, (1,0) 0.6, (1,1) 0.8, (0,0) 0.2


def test_deletion_to_black_by_hand():
    result = deletion(
        RedMeanModel(), image_batch(), MAP, [0], steps=4, prep=HalfPrep(), fill="black"
    )
    expected = [0.5, 0.4, 0.25, 0.05, 0.0]  # mean red after removing 0, 1, ... 4 pixels
    np.testing.assert_allclose(result.curves[0], expected, atol=1e-6)
    # Trapezoid: 0.25 * (0.5 / 2 + 0.4 + 0.25 + 0.05 + 0 / 2) = 0.2375.
    assert result.auc[0] == pytest.approx(0.2375, abs=1e-6)


def test_deletion_to_mean_colour_ends_at_the_mean():
    # fill="mean" is 0 in the normalised input, i.e. pixel 0.5 for HalfPrep.
    result = deletion(RedMeanModel(), image_batch(), MAP, [0], steps=4, prep=HalfPrep())
    np.testing.assert_allclose(result.curves[0], [0.5, 0.525, 0.5, 0.425, 0.5], atol=1e-6)


def test_insertion_from_a_given_start_by_hand():
    start = torch.zeros(1, 3, 2, 2)
    result = insertion(
        RedMeanModel(), image_batch(), MAP, [0], steps=4, prep=HalfPrep(), start=start
    )
    np.testing.assert_allclose(result.curves[0], [0.0, 0.1, 0.25, 0.45, 0.5], atol=1e-6)
    assert result.auc[0] == pytest.approx(0.25 * (0.1 + 0.25 + 0.45 + 0.25), abs=1e-6)


def test_insertion_default_start_is_the_blurred_image_and_ends_at_the_image():
    torch.manual_seed(0)
    pixels = torch.rand(1, 3, 16, 16)
    model = RedMeanModel(normalised=False)
    maps = torch.rand(1, 16, 16)
    result = insertion(model, pixels, maps, [0], steps=8)
    assert result.curves[0, 0] == pytest.approx(blur(pixels)[0, 0].mean().item(), abs=1e-6)
    assert result.curves[0, -1] == pytest.approx(pixels[0, 0].mean().item(), abs=1e-6)


def test_curves_batched_over_images_and_steps_match_single_runs():
    torch.manual_seed(1)
    pixels = torch.rand(3, 3, 6, 5)
    maps = torch.rand(3, 6, 5)
    model = RedMeanModel(normalised=False)
    together = deletion(model, pixels, maps, [0, 1, 0], steps=7, batch_size=4, fill="black")
    for b, target in enumerate([0, 1, 0]):
        alone = deletion(model, pixels[b : b + 1], maps[b : b + 1], [target], 7, fill="black")
        np.testing.assert_allclose(together.curves[b], alone.curves[0], atol=1e-6)
    # Class 1 is 1 - m: the curves of image 1 mirror class 0's.
    mirror = deletion(model, pixels[1:2], maps[1:2], [0], 7, fill="black")
    np.testing.assert_allclose(together.curves[1], 1 - mirror.curves[0], atol=1e-6)


def test_step_counts_ranks_and_area():
    assert step_counts(4, 4) == [0, 1, 2, 3, 4]
    assert step_counts(4, 3) == [0, 1, 3, 4]  # round(4/3) = 1, round(8/3) = 3
    assert step_counts(10, 4) == [0, 3, 5, 8, 10]  # 2.5 and 7.5 round half up
    ranks = saliency_ranks(MAP)
    assert ranks.tolist() == [[3, 0, 1, 2]]
    assert saliency_ranks(torch.zeros(1, 2, 2)).tolist() == [[0, 1, 2, 3]]  # ties: row-major
    assert area_under_curve([0.0, 1.0]) == pytest.approx(0.5)
    assert area_under_curve([1.0, 1.0, 1.0]) == pytest.approx(1.0)
    assert area_under_curve([0.0, 1.0, 0.0]) == pytest.approx(0.5)


def test_blur_keeps_constants_and_mass():
    constant = torch.full((1, 3, 20, 20), 0.3)
    torch.testing.assert_close(blur(constant), constant)
    impulse = torch.zeros(1, 3, 31, 31)
    impulse[..., 15, 15] = 1.0
    blurred = blur(impulse)
    assert blurred.sum().item() == pytest.approx(3.0, abs=1e-4)
    assert blurred[0, 0, 15, 15] < 0.05  # sigma 5 spreads it out
    assert blurred[0, 0, 15, 15] == blurred[0, 0].max()


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="steps"):
        insertion(RedMeanModel(), image_batch(), MAP, [0], steps=0, prep=HalfPrep())
    with pytest.raises(ValueError, match="fill"):
        deletion(RedMeanModel(), image_batch(), MAP, [0], prep=HalfPrep(), fill="white")
    with pytest.raises(ValueError, match="targets"):
        deletion(RedMeanModel(), image_batch(), MAP, [0, 1], prep=HalfPrep())
