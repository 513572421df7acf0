"""Where the transformer's loss should look: the shapes, not the background around them.

A shape covers 3-8% of a 128x128 render, so with plain MSE over the latents the flat background, which is
trivial once its color is known, outvotes the shapes, and the model learns to paint the right background
with soft blobs on it. Each render's latent positions that touch a shape (plus a one-position ring, where
the outline is decided) get `emphasis` times the weight of the rest, and the map is scaled to average 1, so
the loss keeps its scale and the recipe's learning rate still fits.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from engine.toyworld.world import shape_masks, sample_scene

LATENT_FACTOR = 8  # pixels per latent position of the Qwen-Image VAE


def shape_region(masks: Iterable[np.ndarray], image_size: int, factor: int = LATENT_FACTOR) -> torch.Tensor:
    """(H/factor, W/factor) bool: latent positions covering any pixel of any mask, grown by one position all round."""
    cells = image_size // factor
    union = np.zeros((image_size, image_size), dtype=bool)
    for mask in masks:
        union |= mask
    touched = torch.from_numpy(union.reshape(cells, factor, cells, factor).any(axis=(1, 3)))
    grown = torch.nn.functional.max_pool2d(touched[None, None].float(), 3, stride=1, padding=1)[0, 0]
    return grown > 0


def emphasis_map(region: torch.Tensor, emphasis: float) -> torch.Tensor:
    """1 outside the region, `emphasis` inside, then scaled to average exactly 1 over the map."""
    weights = torch.where(region, torch.tensor(float(emphasis)), torch.tensor(1.0))
    return weights / weights.mean()


def shape_loss_weights(seeds: Iterable[int], image_size: int, emphasis: float, factor: int = LATENT_FACTOR
                       ) -> torch.Tensor:
    """(N, H/factor, W/factor) loss weights for the renders of `seeds`, in order (the cache's order); factor:
    pixels per latent position."""
    if image_size % factor:
        raise ValueError(f"image_size: must be a multiple of {factor}, got {image_size}")
    if not emphasis >= 1:
        raise ValueError(f"emphasis: must be at least 1, got {emphasis}")
    maps = [emphasis_map(shape_region(shape_masks(sample_scene(seed, image_size)), image_size, factor), emphasis)
            for seed in seeds]
    return torch.stack(maps)
