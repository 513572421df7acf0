"""Aspect-ratio buckets: every image trains at a size close to its own shape, at most resolution^2 pixels.

A bucket is a (width, height) with both sides multiples of 16 (the VAE divides by 8, the transformer packs
2x2 latent patches), the largest such size under the pixel budget for its aspect ratio. Each batch draws
from one bucket, since a batch is one tensor. The order of batches is a pure function of (seed, epoch), as
in the loop's batch_indices, so a resumed run draws exactly what the uninterrupted one would have.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch

from engine.training import seeding

MULTIPLE = 16  # pixels: VAE factor 8 x patch 2
MAX_ASPECT = 4.0  # wider or taller images are cropped to this ratio


@lru_cache(maxsize=8)
def bucket_sizes(resolution: int) -> tuple[tuple[int, int], ...]:
    """Every bucket for a pixel budget of resolution^2: for each width, the tallest height that fits."""
    if resolution < MULTIPLE or resolution % MULTIPLE:
        raise ValueError(f"resolution must be a multiple of {MULTIPLE} of at least {MULTIPLE}, got {resolution}")
    budget = resolution * resolution
    sizes = []
    for width in range(MULTIPLE, math.isqrt(int(budget * MAX_ASPECT)) + 1, MULTIPLE):
        height = budget // width // MULTIPLE * MULTIPLE
        if height >= MULTIPLE and 1 / MAX_ASPECT <= width / height <= MAX_ASPECT:
            sizes.append((width, height))
    return tuple(sizes)


def bucket_for(width: int, height: int, resolution: int) -> tuple[int, int]:
    """The bucket whose aspect ratio is closest to width:height (in log ratio); the larger one on a tie."""
    aspect = math.log(width / height)
    return min(bucket_sizes(resolution), key=lambda size: (abs(math.log(size[0] / size[1]) - aspect),
                                                           -size[0] * size[1]))


@dataclass(frozen=True)
class Buckets:
    """Which examples train at which size: sizes[b] and the dataset indices in members[b]."""

    sizes: tuple[tuple[int, int], ...]
    members: tuple[tuple[int, ...], ...]

    def __post_init__(self) -> None:
        if len(self.sizes) != len(self.members) or not self.sizes or not all(self.members):
            raise ValueError("every bucket needs a size and at least one member")

    @classmethod
    def assign(cls, image_sizes: Sequence[tuple[int, int]], resolution: int) -> Buckets:
        """Group examples of the given (width, height) by bucket; buckets sorted by size for a stable order."""
        grouped: dict[tuple[int, int], list[int]] = {}
        for index, (width, height) in enumerate(image_sizes):
            grouped.setdefault(bucket_for(width, height, resolution), []).append(index)
        sizes = sorted(grouped)
        return cls(tuple(sizes), tuple(tuple(grouped[size]) for size in sizes))

    def batches_per_epoch(self, global_batch: int, repeats: int = 1) -> int:
        return sum(math.ceil(len(members) * repeats / global_batch) for members in self.members)

    def epoch(self, global_batch: int, seed: int, epoch: int, repeats: int = 1) -> list[tuple[int, torch.Tensor]]:
        """The global batches of one epoch in training order: (bucket, positions within the bucket).

        Each example appears `repeats` times in its bucket; a bucket's last batch is filled up from the start
        of its own shuffled order, so every batch is full and every example is seen each epoch.
        """
        generator = seeding.generator(seed, 3, epoch)
        batches = []
        for bucket, members in enumerate(self.members):
            count = len(members) * repeats
            order = torch.randperm(count, generator=generator) % len(members)
            chunks = math.ceil(count / global_batch)
            positions = order[torch.arange(chunks * global_batch) % count]
            batches += [(bucket, chunk) for chunk in positions.view(chunks, global_batch)]
        shuffled = torch.randperm(len(batches), generator=generator).tolist()
        return [batches[index] for index in shuffled]

    def batch(self, batch_size: int, seed: int, step: int, process: int = 0, processes: int = 1, repeats: int = 1
              ) -> tuple[int, torch.Tensor]:
        """The bucket and positions within it that `process` trains on at `step` (its slice of the global batch)."""
        global_batch = batch_size * processes
        per_epoch = self.batches_per_epoch(global_batch, repeats)
        bucket, positions = self.epoch(global_batch, seed, step // per_epoch, repeats)[step % per_epoch]
        return bucket, positions[process * batch_size:(process + 1) * batch_size]
