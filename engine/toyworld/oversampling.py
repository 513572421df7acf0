"""Which training renders the transformer sees more often: the ones whose one shape is small and hard.

The model learns a small square's corners slowly: its latents come out soft at the scale of one latent
position, and a softened small square decodes as a circle (the recipe's comment has the measurements). This
draws the renders that hold nothing but one small square or one small circle several more times per pass, while
the rest of the data stays in the mix to keep the other shapes. Measured, it did no better than the same steps
on plain data, so the shipped recipe leaves it off; it stays as an option for the next experiments.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from engine.toyworld.vocabulary import Shape, Size
from engine.toyworld.world import sample_scene


def is_lone_small_shape(seed: int, image_size: int, shapes: Iterable[Shape]) -> bool:
    """Whether the render of `seed` holds exactly one shape, small and one of `shapes`."""
    scene = sample_scene(seed, image_size)
    return len(scene.shapes) == 1 and scene.shapes[0].size == Size.SMALL and scene.shapes[0].shape in set(shapes)


def oversampled_order(seeds: Sequence[int], image_size: int, shapes: Iterable[Shape], repeats: int) -> torch.Tensor:
    """Positions into `seeds` to train on: every render once, and each lone small render of `shapes` `repeats`
    more times."""
    if repeats < 0:
        raise ValueError(f"repeats: must be 0 or more, got {repeats}")
    shapes = tuple(shapes)
    everything = torch.arange(len(seeds))
    if repeats == 0 or not shapes:
        return everything
    lone = torch.tensor([i for i, seed in enumerate(seeds) if is_lone_small_shape(seed, image_size, shapes)],
                        dtype=torch.long)
    return torch.cat([everything] + [lone] * repeats)
