"""Aspect-ratio buckets: sizes under the pixel budget, the closest shape, one bucket per batch, every example
once per epoch, disjoint slices per process, and the same draws when asked again (resume)."""

from __future__ import annotations

import math

import pytest
import torch

from engine.training.buckets import Buckets, bucket_for, bucket_sizes


@pytest.mark.parametrize("resolution", [64, 128, 1024])
def test_every_bucket_fits_the_pixel_budget_with_sides_that_are_multiples_of_16(resolution):
    sizes = bucket_sizes(resolution)
    assert (resolution, resolution) in sizes
    for width, height in sizes:
        assert width % 16 == 0 and height % 16 == 0 and width * height <= resolution * resolution
        assert 1 / 4 <= width / height <= 4
        assert width * (height + 16) > resolution * resolution  # the tallest height that fits


def test_an_image_goes_to_the_bucket_closest_to_its_aspect_ratio():
    assert bucket_for(512, 512, 128) == (128, 128)
    assert bucket_for(1920, 1080, 1024) == (1360, 768)  # 16:9 -> 1.77
    width, height = bucket_for(600, 800, 128)
    assert abs(math.log(width / height) - math.log(600 / 800)) < 0.1 and width < height
    assert bucket_for(4000, 100, 128) == (256, 64)  # beyond 4:1, the widest bucket


def test_error_raised_if_the_resolution_is_not_a_multiple_of_16():
    with pytest.raises(ValueError, match="resolution must be a multiple of 16"):
        bucket_sizes(100)


def buckets() -> Buckets:
    return Buckets.assign([(128, 128)] * 7 + [(200, 100)] * 3, resolution=128)


def test_examples_are_grouped_by_bucket():
    grouped = buckets()
    assert grouped.sizes == ((128, 128), (176, 80)) and grouped.members == (tuple(range(7)), (7, 8, 9))


@pytest.mark.parametrize("repeats", [1, 3])
def test_each_epoch_shows_every_example_repeats_times_in_full_batches_from_one_bucket(repeats):
    grouped = buckets()
    epoch = grouped.epoch(global_batch=4, seed=1, epoch=0, repeats=repeats)
    expected = math.ceil(7 * repeats / 4) + math.ceil(3 * repeats / 4)
    assert len(epoch) == grouped.batches_per_epoch(4, repeats) == expected
    seen = {0: [], 1: []}
    for bucket, positions in epoch:
        assert len(positions) == 4
        seen[bucket] += positions.tolist()
    for bucket, members in enumerate(grouped.members):
        counts = torch.bincount(torch.tensor(seen[bucket]), minlength=len(members))
        assert counts.min() >= repeats  # the last batch of a bucket is filled up from its own start
        assert counts.sum() == math.ceil(len(members) * repeats / 4) * 4


def test_epochs_differ_and_the_same_step_draws_the_same_batch_again():
    grouped = buckets()
    first = [(b, p.tolist()) for b, p in grouped.epoch(4, seed=1, epoch=0)]
    assert first == [(b, p.tolist()) for b, p in grouped.epoch(4, seed=1, epoch=0)]
    assert first != [(b, p.tolist()) for b, p in grouped.epoch(4, seed=1, epoch=1)]
    assert first != [(b, p.tolist()) for b, p in grouped.epoch(4, seed=2, epoch=0)]
    bucket, positions = grouped.batch(4, seed=1, step=5)
    again = grouped.batch(4, seed=1, step=5)
    assert bucket == again[0] and torch.equal(positions, again[1])


def test_processes_take_disjoint_halves_of_the_batch_one_process_with_twice_the_batch_takes():
    grouped = Buckets.assign([(64, 64)] * 16, resolution=64)
    for step in range(6):
        whole = grouped.batch(4, seed=0, step=step)
        halves = [grouped.batch(2, seed=0, step=step, process=rank, processes=2) for rank in range(2)]
        assert halves[0][0] == halves[1][0] == whole[0]
        assert torch.equal(torch.cat([halves[0][1], halves[1][1]]), whole[1])
        assert not set(halves[0][1].tolist()) & set(halves[1][1].tolist())
