"""What a generation asks of memory beyond the weights: an activation estimate per component.

Estimates, on the safe side, of the tensors alive at the worst moment of each phase. A transformer block holds
about fourteen width-sized tensors per token at its peak (the MLP's 4x expansion, its activation, the attention
inputs and the residual stream); memory-efficient attention adds nothing quadratic except on devices without
it. The VAE decoder's largest stage runs at full resolution with `vae_width` channels, a few tensors deep,
with causal-convolution caches. An out-of-memory error despite these goes through fallback.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.presets import Preset, Role
from engine.settings import GenerateSettings
from engine.vram.sizes import Architecture
from engine.vram.vocabulary import Precision

TRANSFORMER_TENSORS_PER_TOKEN = 14  # width-sized tensors alive inside one block
TEXT_TENSORS_PER_TOKEN = 20  # the encoder's MLP is wider (5.3x for Qwen2.5)
VAE_TENSORS_PER_PIXEL = 10  # vae_width-channel tensors at full resolution in the decoder's last stage
VAE_TILE = 256  # pixels per tile side when the VAE is tiled (diffusers' default for the Qwen-Image/Wan VAEs)
HEAD_DIM = 128


@dataclass(frozen=True)
class Workload:
    width: int
    height: int
    frames: int = 1
    batch: int = 1  # images (or videos) made at once
    cfg: bool = True  # classifier-free guidance: a second, unconditional pass per step

    def __post_init__(self) -> None:
        for name in ("width", "height", "frames", "batch"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Workload.{name} must be a positive integer, got {value!r}")

    @classmethod
    def of(cls, settings: GenerateSettings) -> "Workload":
        return cls(settings.width, settings.height, batch=settings.count, cfg=settings.uses_guidance)

    @classmethod
    def preset_default(cls, preset: Preset) -> "Workload":
        return cls(preset.defaults.width, preset.defaults.height, cfg=preset.defaults.cfg > 1.0)

    @property
    def label(self) -> str:
        size = f"{self.width}x{self.height}" + (f"x{self.frames} frames" if self.frames > 1 else "")
        return size + (f", batch {self.batch}" if self.batch > 1 else "")


def image_tokens(workload: Workload, architecture: Architecture) -> int:
    """Tokens the transformer sees for the latents of one image or video."""
    side = architecture.vae_scale * architecture.patch
    latent_frames = (workload.frames - 1) // architecture.vae_temporal + 1
    return latent_frames * (workload.height // side) * (workload.width // side)


def activation_bytes(role: Role, workload: Workload, architecture: Architecture, compute: Precision,
                     tiled: bool = False, dense_attention: bool = False) -> int:
    """Peak bytes of activations while `role` computes (compute = the dtype activations are kept in)."""
    size = compute.bytes
    if role is Role.TRANSFORMER:
        passes = workload.batch * (2 if workload.cfg and architecture.cfg_in_batch else 1)
        tokens = image_tokens(workload, architecture) + architecture.text_tokens
        total = passes * tokens * architecture.width * size * TRANSFORMER_TENSORS_PER_TOKEN
        if dense_attention:
            total += passes * (architecture.width // HEAD_DIM) * tokens * tokens * size
        return total
    if role is Role.TEXT_ENCODER:
        # Prompts are encoded one at a time; every layer's hidden state is kept, and the LM head's logits exist.
        per_token = (TEXT_TENSORS_PER_TOKEN + architecture.text_layers) * architecture.text_width
        return architecture.text_tokens * (per_token + architecture.text_vocab) * size
    if role is Role.VAE:
        height = min(workload.height, VAE_TILE) if tiled else workload.height
        width = min(workload.width, VAE_TILE) if tiled else workload.width
        frames_at_once = min(workload.frames, architecture.vae_temporal)
        working = workload.batch * frames_at_once * height * width * architecture.vae_width * VAE_TENSORS_PER_PIXEL
        # The decoded pixels in float32, twice (the output and its clamped copy), whole even when tiled.
        output = workload.batch * workload.frames * 3 * workload.height * workload.width * 4 * 2
        return working * size + output
    raise ValueError(f"no activation estimate for the {role.value}")
