"""Where the loop's batches come from when images come in several sizes: one cache per bucket, or none.

BucketedCache holds, for every bucket, a TrainingCache of its examples fitted to the bucket's size (one
safetensors file per bucket, guarded by a key like the single cache). EncodeOnTheFly encodes each batch's
images and captions as it is drawn, with the encoders kept in memory: slower, but it is what training
without a cache costs, which the training benchmark measures. Both hand the loop (cache, indices): the
TrainingCache to read and the examples in it that this process trains on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from engine.training.buckets import Buckets
from engine.training.caching import Encoders, TrainingCache, build_cache
from engine.training.config import TrainConfig
from engine.training.data import Example, fit_to_size

logger = logging.getLogger(__name__)


class BucketExamples(Sequence[Example]):
    """The members of one bucket, read lazily and fitted to its size (scaled to cover, centre-cropped)."""

    def __init__(self, dataset: Sequence[Example], members: Sequence[int], size: tuple[int, int],
                 caption: Callable[[str], str] = str):
        self.dataset, self.members, self.size, self.caption = dataset, members, size, caption

    def __len__(self) -> int:
        return len(self.members)

    def image_key(self, index: int):
        """The dataset's image_key of the member (its index in the dataset where the dataset has none)."""
        member = self.members[index]
        return self.dataset.image_key(member) if hasattr(self.dataset, "image_key") else member

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        example = self.dataset[self.members[index]]
        mask = fit_to_size(example.loss_mask, *self.size) if example.loss_mask is not None else None
        return Example(fit_to_size(example.image, *self.size), self.caption(example.caption), mask)


class BucketedCache:
    """One TrainingCache per bucket; batches drawn as Buckets.batch says."""

    def __init__(self, buckets: Buckets, caches: Sequence[TrainingCache], repeats: int = 1):
        if len(caches) != len(buckets.sizes):
            raise ValueError(f"{len(buckets.sizes)} buckets but {len(caches)} caches")
        self.buckets, self.caches, self.repeats = buckets, list(caches), repeats

    def __len__(self) -> int:
        return sum(len(cache) for cache in self.caches)

    def pick(self, config: TrainConfig, step: int, process: int = 0, processes: int = 1
             ) -> tuple[TrainingCache, torch.Tensor]:
        bucket, positions = self.buckets.batch(config.batch_size, config.seed, step, process, processes, self.repeats)
        return self.caches[bucket], positions

    @staticmethod
    def file_for(folder: Path, size: tuple[int, int]) -> Path:
        return Path(folder) / f"bucket-{size[0]}x{size[1]}.safetensors"

    @classmethod
    def load_or_build(cls, folder: Path, key: str, buckets: Buckets, dataset: Sequence[Example],
                      encoders: Callable[[], Encoders], repeats: int = 1, caption: Callable[[str], str] = str,
                      progress: Callable[[str, int, int], None] | None = None) -> BucketedCache:
        """The caches in folder made with `key`, encoding (and saving) those that are missing or stale.

        `encoders` is called only when something has to be encoded, so a complete cache never loads them.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        caches: list[TrainingCache] = []
        loaded: Encoders | None = None
        for size, members in zip(buckets.sizes, buckets.members):
            path = cls.file_for(folder, size)
            bucket_key = f"{key}|{size[0]}x{size[1]}|{len(members)}"
            cache = TrainingCache.load(path, bucket_key)
            if cache is None:
                loaded = loaded or encoders()
                examples = BucketExamples(dataset, members, size, caption)
                report = (lambda stage, done, total, size=size:
                          progress(f"{stage} {size[0]}x{size[1]}", done, total)) if progress else None
                cache = build_cache(loaded, examples, key=bucket_key, progress=report)
                cache.save(path)
            caches.append(cache)
        return cls(buckets, caches, repeats)


class EncodeOnTheFly:
    """Encodes every batch when it is drawn: the cost of training without a cache."""

    def __init__(self, buckets: Buckets, dataset: Sequence[Example], encoders: Encoders, repeats: int = 1,
                 caption: Callable[[str], str] = str):
        self.buckets, self.encoders, self.repeats = buckets, encoders, repeats
        self.views = [BucketExamples(dataset, members, size, caption)
                      for size, members in zip(buckets.sizes, buckets.members)]

    def __len__(self) -> int:
        return sum(len(view) for view in self.views)

    def pick(self, config: TrainConfig, step: int, process: int = 0, processes: int = 1
             ) -> tuple[TrainingCache, torch.Tensor]:
        bucket, positions = self.buckets.batch(config.batch_size, config.seed, step, process, processes, self.repeats)
        examples = [self.views[bucket][int(position)] for position in positions]
        cache = build_cache(self.encoders, examples)
        return cache, torch.arange(len(examples))
