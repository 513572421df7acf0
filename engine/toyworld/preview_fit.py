"""Fit the latent->RGB projection that live previews use (engine.pipelines.preview.LatentProjection).

Least squares from the normalized latents (what the transformer sees) to each latent pixel's block of the image
(8x8 for an 8x VAE), averaged, in [-1, 1]: 16 factors per color channel and a bias, written as preview.json.
"""

from __future__ import annotations

import torch

from engine.pipelines.qwen_image import latent_stats, vae_scale
from engine.toyworld.vae_training import render_batch


@torch.no_grad()
def fit_preview(vae, seeds: list[int], size: int, batch_size: int = 32) -> dict[str, list]:
    """{"factors": [[r, g, b] per latent channel], "bias": [r, g, b]} fitted on renders of the given seeds."""
    inputs, targets = [], []
    for start in range(0, len(seeds), batch_size):
        pixels = render_batch(seeds[start:start + batch_size], size)
        mean, inverse_std = latent_stats(_Modules(vae), pixels)
        latents = (vae.encode(pixels).latent_dist.mode() - mean) * inverse_std
        inputs.append(latents[:, :, 0].permute(0, 2, 3, 1).flatten(0, 2))
        pooled = torch.nn.functional.avg_pool2d(pixels[:, :, 0], vae_scale(vae))
        targets.append(pooled.permute(0, 2, 3, 1).flatten(0, 2))
    x = torch.cat(inputs).double()
    x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    solution = torch.linalg.lstsq(x, torch.cat(targets).double()).solution
    return {"factors": [[round(v, 5) for v in row] for row in solution[:-1].tolist()],
            "bias": [round(v, 5) for v in solution[-1].tolist()]}


class _Modules:
    """What latent_stats reads of QwenImageModules."""

    def __init__(self, vae):
        self.vae = vae
