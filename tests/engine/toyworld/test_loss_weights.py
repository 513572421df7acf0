"""The shapes world's loss weights: the latent positions on and around each shape count `emphasis` times more."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.toyworld.loss_weights import emphasis_map, shape_loss_weights, shape_region
from engine.toyworld.world import make_sample


def test_region_is_every_latent_position_a_shape_touches_grown_by_one():
    mask = np.zeros((32, 32), dtype=bool)
    mask[9, 17] = True  # one pixel, in latent position (row 1, column 2) of a 4x4 latent grid
    region = shape_region([mask], 32)
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[0:3, 1:4] = True
    assert torch.equal(region, expected)


def test_emphasis_map_weighs_the_region_emphasis_times_the_rest_and_averages_one():
    region = torch.zeros(4, 4, dtype=torch.bool)
    region[:2, :2] = True
    weights = emphasis_map(region, 5.0)
    assert weights.mean().item() == pytest.approx(1.0)
    assert weights[0, 0].item() == pytest.approx(5 * weights[3, 3].item())
    assert torch.equal(emphasis_map(region, 1.0), torch.ones(4, 4))


@pytest.mark.parametrize("factor", [8, 4], ids=["8x-vae", "4x-vae"])
def test_weights_follow_the_training_renders_of_the_same_seeds(factor):
    weights = shape_loss_weights(range(5, 9), 128, 4.0, factor)
    assert weights.shape == (4, 128 // factor, 128 // factor)
    for row, seed in enumerate(range(5, 9)):
        sample = make_sample(seed, size=128)  # what the cache encodes for this seed
        heavy = weights[row] > weights[row].min()
        assert torch.equal(heavy, shape_region(sample.masks, 128, factor))
        for mask in sample.masks:  # every pixel of every shape lies in a heavy position
            ys, xs = np.nonzero(mask)
            assert bool(heavy[ys // factor, xs // factor].all())
        # and the ring is one latent position wide: a position two away from every shape pixel stays light
        touched = np.zeros(tuple(heavy.shape), dtype=bool)
        for mask in sample.masks:
            ys, xs = np.nonzero(mask)
            touched[ys // factor, xs // factor] = True
        padded = np.pad(touched, 1)
        side = len(touched)
        near = np.any([padded[dy:dy + side, dx:dx + side] for dy in range(3) for dx in range(3)], axis=0)
        assert not bool(heavy[torch.from_numpy(~near)].any())


def test_error_raised_for_an_emphasis_below_one():
    with pytest.raises(ValueError) as caught:
        shape_loss_weights(range(2), 128, 0.5)
    assert str(caught.value) == "emphasis: must be at least 1, got 0.5"


def test_error_raised_for_an_image_the_latent_grid_does_not_divide():
    with pytest.raises(ValueError) as caught:
        shape_loss_weights(range(2), 100, 2.0, 8)
    assert str(caught.value) == "image_size: must be a multiple of 8, got 100"
