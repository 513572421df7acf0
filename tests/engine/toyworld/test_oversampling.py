"""Oversampling the lone small shapes the transformer learns slowly (engine/toyworld/oversampling.py)."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
import torch

from engine.toyworld.detector import detect
from engine.toyworld.oversampling import is_lone_small_shape, oversampled_order
from engine.toyworld.recipe import QUICK, Recipe
from engine.toyworld.vocabulary import Shape, Size
from engine.toyworld.world import make_sample, sample_scene

SEEDS = range(400)


def test_every_render_is_drawn_once_and_each_lone_small_square_or_circle_repeats_more_times():
    order = oversampled_order(SEEDS, 128, (Shape.SQUARE, Shape.CIRCLE), repeats=4)
    counts = Counter(order.tolist())
    assert set(counts) == set(range(len(SEEDS)))
    lone = {seed for seed in SEEDS if counts[seed] == 5}
    assert set(counts.values()) == {1, 5} and 10 < len(lone) < 100
    for seed in SEEDS:
        scene = sample_scene(seed, 128)
        expected = len(scene.shapes) == 1 and scene.shapes[0].size == Size.SMALL and \
            scene.shapes[0].shape in (Shape.SQUARE, Shape.CIRCLE)
        assert (seed in lone) == expected


def test_the_oversampled_renders_show_one_small_square_or_circle():
    """Judged in the pixels by the detector, so the selection and the renders cannot drift apart."""
    order = oversampled_order(SEEDS, 128, (Shape.SQUARE,), repeats=1)
    extra = order[len(SEEDS):].tolist()
    assert extra
    for seed in extra[:8]:
        found = detect(np.asarray(make_sample(seed, size=128).image)).shapes
        assert len(found) == 1 and found[0].shape == Shape.SQUARE


def test_no_repeats_or_no_shapes_leave_the_order_plain():
    assert torch.equal(oversampled_order(SEEDS, 128, (Shape.SQUARE,), repeats=0), torch.arange(len(SEEDS)))
    assert torch.equal(oversampled_order(SEEDS, 128, (), repeats=3), torch.arange(len(SEEDS)))
    assert not is_lone_small_shape(0, 128, ())


def test_the_recipe_checks_its_oversampling_settings():
    with pytest.raises(ValueError) as caught:
        Recipe(oversample_repeats=-1)
    assert str(caught.value) == "oversample_repeats: must be 0 or more, got -1"
    assert Recipe(oversampled_shapes=("triangle",)).oversampled_shapes == (Shape.TRIANGLE,)
    with pytest.raises(ValueError):
        Recipe(oversampled_shapes=("hexagon",))


def test_the_transformer_stage_trains_on_the_oversampled_cache(tmp_path, monkeypatch):
    """The build's transformer stage hands train() the cache with the lone small renders repeated."""
    import engine.training.loop as loop
    from engine.toyworld.build import CACHE_FILE, cache_key, train_transformer
    from engine.training.caching import TrainingCache

    recipe = replace(QUICK, train_images=64, oversample_repeats=3)
    latents = torch.arange(64, dtype=torch.float32)[:, None, None, None].expand(64, 16, 16, 16).contiguous()
    TrainingCache(latents, torch.zeros(64, 4, 32), torch.full((64,), 4), torch.zeros(1, 2, 32),
                  key=cache_key(recipe)).save(tmp_path / CACHE_FILE)
    seen = {}
    monkeypatch.setattr(loop, "train", lambda transformer, cache, *rest: seen.setdefault("cache", cache))
    train_transformer(recipe, tmp_path)
    drawn = Counter(int(value) for value in seen["cache"].latents[:, 0, 0, 0])
    lone = [seed for seed in range(64) if is_lone_small_shape(seed, 128, recipe.oversampled_shapes)]
    assert lone and all(drawn[seed] == 4 for seed in lone)
    assert sum(drawn.values()) == 64 + 3 * len(lone)
