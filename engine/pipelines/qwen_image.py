"""Qwen-Image text-to-image and image-to-image, following diffusers' QwenImagePipeline and
QwenImageImg2ImgPipeline step for step, so the same files, seed and settings give the same pixels.

Reads top to bottom: validate -> encode prompts -> prepare latents (noise, or a noised input image) ->
denoise (Euler, true CFG with the norm rescale) -> decode. Every image i of a batch uses its own CPU
generator seeded with seed+i, so an image never depends on the batch it was made in.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from engine.errors import InputImageError
from engine.loading import QWEN_PROMPT_DROP, QWEN_PROMPT_TEMPLATE, QwenImageModules
from engine.pipelines.preview import LatentProjection
from engine.pipelines.run_control import RunControl
from engine.schedulers.flow_match import euler_step, flow_match_schedule
from engine.settings import GenerateSettings

if TYPE_CHECKING:
    from engine.vram.planner import VramPlan

logger = logging.getLogger(__name__)

MAX_PROMPT_TOKENS = 1024  # Qwen-Image's training length; longer prompts are cut (with a note)
PATCH = 2


@dataclass
class GenerationResult:
    images: list[Image.Image]
    pixels: torch.Tensor  # (batch, 3, height, width) float in [0, 1], before 8-bit rounding
    seeds: list[int]
    settings: GenerateSettings
    notes: list[str] = field(default_factory=list)
    plan: VramPlan | None = None  # where the weights were while it ran (engine.vram), set by Model.generate


@dataclass(frozen=True)
class PromptEmbeddings:
    embeds: torch.Tensor  # (batch, tokens, width)
    mask: torch.Tensor | None  # (batch, tokens); None when no token is padding, as diffusers passes it
    truncated: bool


def encode_prompts(modules: QwenImageModules, prompts: list[str]) -> PromptEmbeddings:
    """Last hidden state of Qwen2.5-VL over the templated prompts, the template's prefix dropped."""
    texts = [QWEN_PROMPT_TEMPLATE.format(prompt) for prompt in prompts]
    limit = MAX_PROMPT_TOKENS + QWEN_PROMPT_DROP
    tokens = modules.tokenizer(texts, max_length=limit, padding=True, truncation=True, return_tensors="pt")
    untruncated = max(len(ids) for ids in modules.tokenizer(texts).input_ids)
    # A plan may run the text encoder on the CPU beside the GPU (engine.vram); holders of just the encoders
    # (training's caching) have no such field.
    tokens = tokens.to(getattr(modules, "text_encoder_device", None) or modules.device)
    output = modules.text_encoder(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask,
                                  output_hidden_states=True)
    hidden = output.hidden_states[-1]
    mask = tokens.attention_mask.bool()
    # Keep each prompt's real tokens, drop the template prefix, then right-pad to the longest.
    pieces = [states[keep][QWEN_PROMPT_DROP:] for states, keep in zip(hidden, mask)]
    longest = max(piece.shape[0] for piece in pieces)
    embeds = torch.stack([torch.cat([p, p.new_zeros(longest - p.shape[0], p.shape[1])]) for p in pieces])
    lengths = torch.tensor([piece.shape[0] for piece in pieces], device=modules.device)
    token_mask = (torch.arange(longest, device=modules.device)[None, :] < lengths[:, None]).long()
    return PromptEmbeddings(
        embeds=embeds.to(device=modules.device, dtype=modules.dtype),
        mask=None if bool(token_mask.all()) else token_mask,
        truncated=untruncated > limit,
    )


def repeat_embeddings(embeddings: PromptEmbeddings, times: int) -> PromptEmbeddings:
    mask = embeddings.mask.repeat_interleave(times, dim=0) if embeddings.mask is not None else None
    return PromptEmbeddings(embeddings.embeds.repeat_interleave(times, dim=0), mask, embeddings.truncated)


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) latents -> (B, H/2*W/2, C*4) tokens of 2x2 patches."""
    batch, channels, height, width = latents.shape
    latents = latents.view(batch, channels, height // PATCH, PATCH, width // PATCH, PATCH)
    return latents.permute(0, 2, 4, 1, 3, 5).reshape(batch, (height // PATCH) * (width // PATCH), channels * 4)


def unpack_latents(tokens: torch.Tensor, latent_height: int, latent_width: int) -> torch.Tensor:
    batch, _, packed = tokens.shape
    channels = packed // (PATCH * PATCH)
    latents = tokens.view(batch, latent_height // PATCH, latent_width // PATCH, channels, PATCH, PATCH)
    return latents.permute(0, 3, 1, 4, 2, 5).reshape(batch, channels, latent_height, latent_width)


def vae_scale(vae) -> int:
    """Pixels per latent position: 2 per downsampling stage, as diffusers' pipelines read it from the config
    (8 for Qwen-Image's VAE; a tiny model's may downsample less)."""
    return 2 ** len(vae.config.temperal_downsample)


def latent_stats(modules: QwenImageModules, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The VAE's per-channel latent mean and 1/std, shaped (1, C, 1, 1, 1) like `like`: the transformer sees
    (latents - mean) * inverse_std. Trainers normalize their cached latents with the same numbers."""
    config = modules.vae.config
    shape = (1, config.z_dim, 1, 1, 1)
    mean = torch.tensor(config.latents_mean).view(shape).to(like.device, like.dtype)
    inverse_std = 1.0 / torch.tensor(config.latents_std).view(shape).to(like.device, like.dtype)
    return mean, inverse_std


def load_input_image(source: str | Image.Image) -> Image.Image:
    """Open an input image from a path or take a PIL image; EXIF rotation applied, RGB."""
    if isinstance(source, Image.Image):
        return source.convert("RGB")
    try:
        with Image.open(source) as image:
            image.load()
            return ImageOps.exif_transpose(image).convert("RGB")
    except FileNotFoundError:
        raise InputImageError(f"Input image {source} does not exist.") from None
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise InputImageError(f"Cannot read input image {source}: not a readable image ({error}).",
                              "Use a PNG, JPEG or WebP file.") from None


def image_to_tensor(image: Image.Image, width: int, height: int) -> torch.Tensor:
    """Resize (Lanczos, as diffusers' VaeImageProcessor) and scale to [-1, 1]: (1, 3, H, W) float32."""
    resized = image.resize((width, height), Image.Resampling.LANCZOS)
    pixels = torch.frombuffer(bytearray(resized.tobytes()), dtype=torch.uint8).view(height, width, 3)
    return (pixels.permute(2, 0, 1).float() / 255.0 * 2.0 - 1.0).unsqueeze(0)


def prepare_latents(modules: QwenImageModules, settings: GenerateSettings, generators: list[torch.Generator],
                    input_image: Image.Image | None, first_sigma: torch.Tensor) -> torch.Tensor:
    """Packed starting latents: pure noise, or the input image's latents noised to the first sigma."""
    scale = vae_scale(modules.vae)
    latent_height, latent_width = settings.height // scale, settings.width // scale
    channels = modules.transformer.config.in_channels // 4
    image_latents = None
    if input_image is not None:
        pixels = image_to_tensor(input_image, settings.width, settings.height)
        pixels = pixels.unsqueeze(2).to(modules.device, modules.dtype)  # the VAE is a video VAE: add a frame axis
        mean, inverse_std = latent_stats(modules, pixels)
        encoded = modules.vae.encode(pixels).latent_dist
    starts = []
    for generator in generators:
        if input_image is not None:
            # Sampling the posterior draws from the image's own generator before its noise, as diffusers does.
            image_latents = (encoded.sample(generator) - mean) * inverse_std
        noise = torch.randn((1, 1, channels, latent_height, latent_width), generator=generator,
                            dtype=modules.dtype).to(modules.device)
        if image_latents is not None:
            noise = first_sigma * noise + (1.0 - first_sigma) * image_latents.transpose(1, 2)
        starts.append(noise)
    latents = torch.cat(starts)[:, 0]
    return pack_latents(latents)


def guided_velocity(modules: QwenImageModules, latents: torch.Tensor, timestep: torch.Tensor,
                    positive: PromptEmbeddings, negative: PromptEmbeddings | None, cfg: float,
                    img_shapes: list) -> torch.Tensor:
    """The transformer's velocity; with true CFG, rescaled to the conditional prediction's norm."""
    velocity = modules.transformer(hidden_states=latents, timestep=timestep, encoder_hidden_states=positive.embeds,
                                   encoder_hidden_states_mask=positive.mask, img_shapes=img_shapes,
                                   return_dict=False)[0]
    if negative is None:
        return velocity
    unconditional = modules.transformer(hidden_states=latents, timestep=timestep,
                                        encoder_hidden_states=negative.embeds,
                                        encoder_hidden_states_mask=negative.mask, img_shapes=img_shapes,
                                        return_dict=False)[0]
    combined = unconditional + cfg * (velocity - unconditional)
    return combined * (torch.norm(velocity, dim=-1, keepdim=True) / torch.norm(combined, dim=-1, keepdim=True))


def decode(modules: QwenImageModules, tokens: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Packed latents -> (B, 3, H, W) pixels in [0, 1]."""
    scale = vae_scale(modules.vae)
    latents = unpack_latents(tokens, height // scale, width // scale).unsqueeze(2).to(modules.vae.dtype)
    mean, inverse_std = latent_stats(modules, latents)
    latents = latents / inverse_std + mean
    image = modules.vae.decode(latents, return_dict=False)[0][:, :, 0]
    return (image / 2 + 0.5).clamp(0, 1)


def to_pil(pixels: torch.Tensor) -> list[Image.Image]:
    array = (pixels.permute(0, 2, 3, 1).float().cpu().numpy() * 255).round().astype("uint8")
    return [Image.fromarray(image) for image in array]


@torch.no_grad()
def generate(modules: QwenImageModules, settings: GenerateSettings, input_image: Image.Image | None = None,
             control: RunControl | None = None, projection: LatentProjection | None = None) -> GenerationResult:
    """Run one generation. Sizes must already fit the model (settings.fit_to_limits)."""
    control = control or RunControl()
    notes: list[str] = []
    use_cfg = settings.uses_guidance

    positive = encode_prompts(modules, [settings.prompt])
    negative = encode_prompts(modules, [settings.negative_prompt or " "]) if use_cfg else None
    if positive.truncated or (negative is not None and negative.truncated):
        notes.append(f"The prompt was longer than {MAX_PROMPT_TOKENS} tokens and was cut there.")
    positive = repeat_embeddings(positive, settings.count)
    negative = repeat_embeddings(negative, settings.count) if negative is not None else None

    pixels_per_token = vae_scale(modules.vae) * PATCH  # along each side
    packed_height, packed_width = settings.height // pixels_per_token, settings.width // pixels_per_token
    strength = settings.strength if input_image is not None else 1.0
    schedule = flow_match_schedule(settings.steps, modules.schedule, packed_height * packed_width, strength)
    sigmas = schedule.sigmas.to(modules.device)
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in settings.seeds()]
    latents = prepare_latents(modules, settings, generators, input_image, sigmas[0])
    img_shapes = [[(1, packed_height, packed_width)]] * settings.count

    total = schedule.num_steps
    control.start(total)
    for index, t in enumerate(schedule.timesteps.to(modules.device)):
        control.check_cancelled()
        timestep = t.expand(latents.shape[0]).to(latents.dtype) / 1000
        velocity = guided_velocity(modules, latents, timestep, positive, negative, settings.cfg, img_shapes)
        latents = euler_step(latents, velocity, sigmas[index], sigmas[index + 1])
        control.report(index + 1, total)
        if control.wants_preview(index + 1, total):
            predicted_clean = latents - sigmas[index + 1] * velocity
            preview_latents = unpack_latents(predicted_clean, packed_height * PATCH, packed_width * PATCH)
            control.on_preview(index + 1, (projection or LatentProjection.wan21()).to_images(preview_latents))
    control.check_cancelled()
    pixels = decode(modules, latents, settings.width, settings.height)
    return GenerationResult(images=to_pil(pixels), pixels=pixels, seeds=settings.seeds(), settings=settings,
                            notes=notes)
