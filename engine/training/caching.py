"""Encode a dataset once: text-encoder outputs of every caption and VAE latents of every image.

The encoders are frozen, so their outputs never change during training; computing them once takes them
out of every step, and the encoders can leave memory before the transformer trains. Captions go through
the pipeline's own encode_prompts, so training sees exactly the conditioning that sampling will.
The cache is one safetensors file; a `key` describing the dataset and encoders guards against reusing a
cache made from something else.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from engine.pipelines.qwen_image import encode_prompts, image_to_tensor, latent_stats
from engine.training.data import Example

logger = logging.getLogger(__name__)

EMPTY_PROMPT = " "  # what the pipeline's negative prompt defaults to, and what caption dropout trains on

Progress = Callable[[int, int], None]  # (done, total)


@dataclass(frozen=True)
class Encoders:
    """The fields of QwenImageModules that encode_prompts and the VAE encoding read."""

    tokenizer: Any = None
    text_encoder: Any = None
    vae: Any = None
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32


@dataclass(frozen=True, eq=False)
class TrainingCache:
    latents: torch.Tensor  # (N, C, H/8, W/8), normalized as the transformer sees them
    embeds: torch.Tensor  # (N, L, D) prompt embeddings, right-padded with zeros to the longest
    lengths: torch.Tensor  # (N,) real tokens of each prompt
    empty_embeds: torch.Tensor  # (1, L0, D) the empty prompt's embeddings (caption dropout)
    key: str = ""
    # (N, H/8, W/8) weights of each latent position in the loss, or None for plain MSE (see
    # objective.flow_matching_loss); the shapes world uses them to stop the background outvoting the shapes.
    loss_weights: torch.Tensor | None = None

    def __post_init__(self) -> None:
        count = self.latents.shape[0]
        if self.embeds.shape[0] != count or self.lengths.shape[0] != count:
            raise ValueError(f"cache: {count} latents but {self.embeds.shape[0]} embeddings and "
                             f"{self.lengths.shape[0]} lengths")
        if self.loss_weights is not None and \
                tuple(self.loss_weights.shape) != (count, *self.latents.shape[-2:]):
            raise ValueError(f"cache: loss weights of shape {tuple(self.loss_weights.shape)} for latents of shape "
                             f"{tuple(self.latents.shape)}; expected {(count, *self.latents.shape[-2:])}")

    def __len__(self) -> int:
        return self.latents.shape[0]

    def take(self, indices: Sequence[int] | torch.Tensor) -> TrainingCache:
        """The examples at `indices`, in that order; an index given twice makes the example twice as likely to
        be drawn (how a recipe oversamples the examples its model finds hard)."""
        indices = torch.as_tensor(indices, dtype=torch.long)
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= len(self)):
            raise IndexError(f"cache: indices must lie in 0 .. {len(self) - 1}, got {int(indices.min())} .. "
                             f"{int(indices.max())}")
        weights = None if self.loss_weights is None else self.loss_weights[indices]
        return replace(self, latents=self.latents[indices], embeds=self.embeds[indices],
                       lengths=self.lengths[indices], loss_weights=weights)

    def text_batch(self, indices: torch.Tensor, dropped: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Embeddings of the given examples cut to their longest prompt, and the mask (None when no padding).

        `dropped` (bool per example) swaps in the empty prompt, as classifier-free guidance's unconditional side.
        """
        lengths = self.lengths[indices].clone()
        embeds = self.embeds[indices]
        if dropped is not None and bool(dropped.any()):
            empty_length = self.empty_embeds.shape[1]
            longest = max(int(lengths.max()), empty_length)
            embeds = _pad_to(embeds, longest).clone()
            embeds[dropped] = 0
            embeds[dropped, :empty_length] = self.empty_embeds[0]
            lengths[dropped] = empty_length
        longest = int(lengths.max())
        embeds = _pad_to(embeds, longest)[:, :longest]
        mask = (torch.arange(longest)[None, :] < lengths[:, None]).long()
        return embeds, None if bool(mask.all()) else mask

    def save(self, path: Path) -> None:
        path = Path(path)
        temporary = path.with_name(path.name + ".tmp")
        tensors = {"latents": self.latents, "embeds": self.embeds, "lengths": self.lengths,
                   "empty_embeds": self.empty_embeds}
        if self.loss_weights is not None:
            tensors["loss_weights"] = self.loss_weights
        save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, str(temporary),
                  metadata={"key": self.key})
        temporary.replace(path)

    @classmethod
    def load(cls, path: Path, key: str) -> TrainingCache | None:
        """The cache at path if it was made with the same key, else None."""
        path = Path(path)
        if not path.is_file():
            return None
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            if (handle.metadata() or {}).get("key") != key:
                logger.info("Ignoring %s: it was made from other data or encoders", path)
                return None
        tensors = load_file(str(path))
        return cls(tensors["latents"], tensors["embeds"], tensors["lengths"], tensors["empty_embeds"], key,
                   tensors.get("loss_weights"))


def _pad_to(embeds: torch.Tensor, length: int) -> torch.Tensor:
    if embeds.shape[1] >= length:
        return embeds
    return torch.cat([embeds, embeds.new_zeros(embeds.shape[0], length - embeds.shape[1], embeds.shape[2])], dim=1)


@torch.no_grad()
def encode_captions(encoders: Encoders, captions: Sequence[str], batch_size: int = 64,
                    progress: Progress | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, L, D) right-padded embeddings and (N,) lengths of the captions, via the pipeline's encode_prompts."""
    pieces: list[torch.Tensor] = []
    for start in range(0, len(captions), batch_size):
        chunk = list(captions[start:start + batch_size])
        encoded = encode_prompts(encoders, chunk)
        lengths = encoded.mask.sum(dim=1) if encoded.mask is not None else [encoded.embeds.shape[1]] * len(chunk)
        pieces += [row[:int(length)].float().cpu() for row, length in zip(encoded.embeds, lengths)]
        if progress:
            progress(min(start + batch_size, len(captions)), len(captions))
    longest = max(piece.shape[0] for piece in pieces)
    embeds = torch.stack([_pad_to(piece[None], longest)[0] for piece in pieces])
    return embeds, torch.tensor([piece.shape[0] for piece in pieces])


@torch.no_grad()
def encode_images(encoders: Encoders, images: Sequence[Any], batch_size: int = 32,
                  progress: Progress | None = None) -> torch.Tensor:
    """Normalized VAE latents (N, C, H/8, W/8) of same-sized RGB images: the posterior means."""
    chunks = []
    for start in range(0, len(images), batch_size):
        batch = [image_to_tensor(image, *image.size) for image in images[start:start + batch_size]]
        pixels = torch.cat(batch).unsqueeze(2).to(encoders.device, encoders.dtype)  # add the video VAE's frame axis
        mean, inverse_std = latent_stats(encoders, pixels)
        latents = (encoders.vae.encode(pixels).latent_dist.mode() - mean) * inverse_std
        chunks.append(latents[:, :, 0].float().cpu())
        if progress:
            progress(min(start + batch_size, len(images)), len(images))
    return torch.cat(chunks)


def build_cache(encoders: Encoders, examples: Sequence[Example], key: str = "", batch_size: int = 32,
                progress: Callable[[str, int, int], None] | None = None) -> TrainingCache:
    """Encode every example's image and caption (progress(stage, done, total), stage "images" or "text").

    An example the sequence's `image_key` says repeats an earlier one (kohya's repeat folders list each image
    several times) is read and encoded once; its rows of the cache are copies.
    """
    def report(stage: str) -> Progress | None:
        return (lambda done, total: progress(stage, done, total)) if progress else None

    firsts = first_occurrences(examples)
    distinct = sorted(set(firsts))
    images = _Images(examples, distinct)
    latents = encode_images(encoders, images, batch_size, report("images"))
    embeds, lengths = encode_captions(encoders, images.captions, batch_size * 2, report("text"))
    empty = encode_captions(encoders, [EMPTY_PROMPT])[0]
    weights = masked_loss_weights(images.masks, latents.shape[-2:]) if any(images.masks) else None
    cache = TrainingCache(latents=latents, embeds=embeds, lengths=lengths, empty_embeds=empty, key=key,
                          loss_weights=weights)
    if len(distinct) == len(examples):
        return cache
    row_of = {index: row for row, index in enumerate(distinct)}
    return cache.take([row_of[first] for first in firsts])


def first_occurrences(examples: Sequence[Example]) -> list[int]:
    """For each example, the index of the first one with the same `image_key` (itself when the sequence has
    no image_key: then every example counts as distinct)."""
    image_key = getattr(examples, "image_key", None)
    if image_key is None:
        return list(range(len(examples)))
    first: dict[Any, int] = {}
    return [first.setdefault(image_key(index), index) for index in range(len(examples))]


def masked_loss_weights(masks: Sequence[Any], latent_size: Sequence[int]) -> torch.Tensor:
    """(N, H/8, W/8) loss weights from per-image "L" masks (None: every pixel counts fully).

    Each latent position takes the mean of the mask over the pixels it encodes, and each image's map is then
    scaled to average 1, so a mask says where an image teaches, not how much: the learning rate keeps its
    meaning whatever share of the image the mask covers (kohya multiplies the loss by the mask unscaled). A
    mask with nothing left after the bucket's crop gives zeros.
    """
    height, width = latent_size
    maps = []
    for mask in masks:
        if mask is None:
            maps.append(torch.ones(height, width))
            continue
        pixels = torch.from_numpy(np.asarray(mask, dtype=np.float32))[None, None] / 255
        pooled = torch.nn.functional.adaptive_avg_pool2d(pixels, (height, width))[0, 0]
        # All transparent (a bucket's crop can cut the opaque part away): the image teaches nothing, as in kohya.
        maps.append(pooled / pooled.mean() if float(pooled.sum()) > 0 else pooled)
    return torch.stack(maps)


class _Images(Sequence[Any]):
    """The images of the examples at `indices`, read lazily so a large dataset is never all in memory. Each
    file is decoded once: the captions and loss masks of those read are kept (small) in `captions` and `masks`,
    so encode the images before the captions."""

    def __init__(self, examples: Sequence[Example], indices: Sequence[int]):
        self.examples, self.indices = examples, indices
        self.captions: list[str] = [""] * len(indices)
        self.masks: list[Any] = [None] * len(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        example = self.examples[self.indices[index]]
        self.captions[index], self.masks[index] = example.caption, example.loss_mask
        return example.image
