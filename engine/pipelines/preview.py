"""Cheap previews: project normalized latents to RGB with a 16x3 matrix, no VAE decode.

The Qwen-Image VAE shares the Wan 2.1 latent space; the factors below are the widely used least-squares fit
for it (as published in ComfyUI's latent formats). A model folder may carry its own fit in preview.json
({"factors": [[r, g, b] x channels], "bias": [r, g, b]}), which the shapes-world models do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

WAN21_RGB_FACTORS = (
    (-0.1299, -0.1692, 0.2932), (0.0671, 0.0406, 0.0442), (0.3568, 0.2548, 0.1747), (0.0372, 0.2344, 0.1420),
    (0.0313, 0.0189, -0.0328), (0.0296, -0.0956, -0.0665), (-0.3477, -0.4059, -0.2925), (0.0166, 0.1902, 0.1975),
    (-0.0412, 0.0267, -0.1364), (-0.1293, 0.0740, 0.1636), (0.0680, 0.3019, 0.1128), (0.0032, 0.0581, 0.0639),
    (-0.1251, 0.0927, 0.1699), (0.0060, -0.0633, 0.0005), (0.3477, 0.2275, 0.2950), (0.1984, 0.0913, 0.1861),
)
WAN21_RGB_BIAS = (-0.1835, -0.0868, -0.3360)


@dataclass(frozen=True)
class LatentProjection:
    factors: torch.Tensor  # (channels, 3)
    bias: torch.Tensor  # (3,)

    @classmethod
    def wan21(cls) -> "LatentProjection":
        return cls(torch.tensor(WAN21_RGB_FACTORS), torch.tensor(WAN21_RGB_BIAS))

    @classmethod
    def for_model(cls, model_folder: Path | None) -> "LatentProjection":
        path = Path(model_folder) / "preview.json" if model_folder else None
        if path is not None and path.is_file():
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(torch.tensor(data["factors"], dtype=torch.float32), torch.tensor(data["bias"], dtype=torch.float32))
        return cls.wan21()

    def to_images(self, latents: torch.Tensor) -> list[Image.Image]:
        """latents: (batch, channels, height, width), normalized as the transformer sees them."""
        rgb = torch.einsum("bchw,cr->bhwr", latents.float().cpu(), self.factors) + self.bias
        pixels = ((rgb + 1.0) * 127.5).clamp(0, 255).to(torch.uint8).numpy()
        return [Image.fromarray(image) for image in pixels]
