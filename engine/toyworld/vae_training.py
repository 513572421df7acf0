"""Train the shapes world's VAE: diffusers' AutoencoderKLQwenImage (the Wan 2.1 causal video VAE) on single
frames of world renders, then measure its latents so the pipeline can normalize them.

Loss: L1 + MSE of the reconstruction, plus a small KL term that keeps the latents near a unit Gaussian
(smooth enough for a diffusion model to learn). Training runs on random crops: the convolutions do not care
about the image size, and a crop costs a fraction of a full image. Checkpoints go through
engine.training.checkpoint, and every draw is seeded by (seed, step), so a run resumes exactly.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from engine.errors import SettingsError
from engine.training import checkpoint, seeding
from engine.training.logbook import Logbook
from engine.training.single_frame import single_frame_convs
from engine.toyworld.tiny_qwen_image import vae_stages
from engine.toyworld.world import make_sample

logger = logging.getLogger(__name__)

INITIAL_LOGVAR = -6.0


@dataclass(frozen=True)
class VaeTrainConfig:
    steps: int = 3000
    batch_size: int = 16
    crop: int = 64  # side of the random crops trained on (a multiple of 8)
    image_size: int = 128
    learning_rate: float = 5e-4  # 1e-3 diverges after the warmup
    warmup_steps: int = 100
    min_lr_ratio: float = 0.05  # cosine decay to this share of the learning rate
    kl_weight: float = 1e-5
    max_grad_norm: float = 1.0
    first_seed: int = 0  # renders come from seeds first_seed .. first_seed + images - 1
    images: int = 20000
    seed: int = 0
    base_dim: int = 16
    res_blocks: int = 1
    z_dim: int = 16
    # Spatial downsampling stages, 2x each: Qwen-Image's VAE has 3 (8x). With 2 (4x) a small shape of the
    # 128-pixel world (21 pixels) spans about 2.6 transformer tokens across instead of 1.3.
    downsamples: int = 3
    checkpoint_every: int = 250
    log_every: int = 25

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "crop", "image_size", "images", "base_dim", "res_blocks", "z_dim",
                     "downsamples", "checkpoint_every", "log_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SettingsError(f"VaeTrainConfig.{name} must be a positive whole number, got {value!r}.")
        if self.crop % 8 or self.crop > self.image_size:
            raise SettingsError(f"VaeTrainConfig.crop must be a multiple of 8 up to image_size, got {self.crop}.")
        if not self.learning_rate > 0 or not 0 <= self.min_lr_ratio <= 1 or self.kl_weight < 0:
            raise SettingsError("VaeTrainConfig: learning_rate must be > 0, min_lr_ratio in [0, 1], kl_weight >= 0.")
        if self.downsamples not in (2, 3):
            raise SettingsError(f"VaeTrainConfig.downsamples must be 2 (4x) or 3 (8x, Qwen-Image's), got {self.downsamples}.")

    @property
    def scale(self) -> int:
        """Pixels per latent position."""
        return 2**self.downsamples


def build_vae(config: VaeTrainConfig):
    """A fresh VAE, seeded. The posterior starts narrow (log-variance -6): at the default 0 the decoder would
    first learn from latents drowned in unit noise, and training crawls until the encoder has shrunk it."""
    from diffusers import AutoencoderKLQwenImage

    torch.manual_seed(config.seed)
    vae = AutoencoderKLQwenImage(base_dim=config.base_dim, z_dim=config.z_dim, num_res_blocks=config.res_blocks,
                                 **vae_stages(config.downsamples),
                                 latents_mean=[0.0] * config.z_dim, latents_std=[1.0] * config.z_dim)
    with torch.no_grad():
        vae.quant_conv.bias[config.z_dim:] = INITIAL_LOGVAR
    return vae


def render_batch(seeds: list[int], size: int) -> torch.Tensor:
    """World renders of the given seeds as (B, 3, 1, size, size) floats in [-1, 1]."""
    pixels = np.stack([np.asarray(make_sample(seed, size=size).image) for seed in seeds])
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(127.5).sub(1.0).unsqueeze(2)


def _batch(config: VaeTrainConfig, step: int) -> torch.Tensor:
    generator = seeding.generator(config.seed, 3, step)
    seeds = (config.first_seed + torch.randint(config.images, (config.batch_size,), generator=generator)).tolist()
    full = render_batch(seeds, config.image_size)
    room = config.image_size - config.crop + 1
    offsets = torch.randint(room, (config.batch_size, 2), generator=generator).tolist()
    return torch.stack([full[i, :, :, y:y + config.crop, x:x + config.crop] for i, (y, x) in enumerate(offsets)])


def _learning_rate(config: VaeTrainConfig, step: int) -> float:
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = min((step - config.warmup_steps) / max(config.steps - config.warmup_steps, 1), 1.0)
    floor = config.min_lr_ratio
    return config.learning_rate * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def decode_unclamped(vae, latents: torch.Tensor) -> torch.Tensor:
    """vae.decode before its final clamp to [-1, 1], for single frames (no frame cache is needed then).

    Training on the clamped output would leave a pixel stuck beyond the wrong end of the range without a
    gradient; the world's saturated colors sit exactly on the ends, so many do."""
    return vae.decoder(vae.post_quant_conv(latents))


def vae_loss(vae, pixels: torch.Tensor, kl_weight: float, generator: torch.Generator) -> tuple[torch.Tensor, float]:
    """(loss, reconstruction MSE) of one batch (B, 3, 1, H, W) in [-1, 1]."""
    posterior = vae.encode(pixels).latent_dist
    reconstruction = decode_unclamped(vae, posterior.sample(generator))
    l1 = (reconstruction - pixels).abs().mean()
    mse = (reconstruction - pixels).pow(2).mean()
    kl = 0.5 * (posterior.mean.pow(2) + posterior.var - 1.0 - posterior.logvar).mean()  # per latent element
    return l1 + mse + kl_weight * kl, float(mse.detach())


def _check_resumable(config: VaeTrainConfig, saved: dict | None, path: Path) -> None:
    """A checkpoint made with other settings would not continue the same run (steps and reporting may change)."""
    if saved is None:
        return
    changed = sorted(key for key, value in saved.items()
                     if key not in ("steps", "checkpoint_every", "log_every") and asdict(config).get(key) != value)
    if changed:
        raise checkpoint.CheckpointError(f"The VAE checkpoint {path} was made with other settings ({', '.join(changed)}).",
                                         "Use the same settings, or delete that folder to train the VAE afresh.")


def train_vae(config: VaeTrainConfig, work_dir: Path, progress: Callable[[int, int, float, float], None] | None = None):
    """Train (or resume) the VAE in work_dir; returns the trained model. progress(step, total, mse, eta_s)."""
    vae = build_vae(config)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.learning_rate, weight_decay=0.0, betas=(0.9, 0.99))
    root = Path(work_dir) / "checkpoints"
    logbook = Logbook(Path(work_dir) / "loss.jsonl")
    start = 0
    saved = checkpoint.latest(root)
    if saved is not None:
        state = checkpoint.load(saved)
        _check_resumable(config, state.state.get("config"), saved)
        vae.load_state_dict(state.modules["model"])
        optimizer.load_state_dict(state.optimizer)
        start = state.step
        logger.info("VAE: resuming from %s", saved)
    logbook.rewind(start)
    vae.train()
    with single_frame_convs(vae):
        _steps(vae, optimizer, config, start, root, logbook, progress)
    return vae.eval().requires_grad_(False)


def _steps(vae, optimizer, config: VaeTrainConfig, start: int, root: Path, logbook: Logbook, progress) -> None:
    began, interval = time.monotonic(), []
    for step in range(start, config.steps):
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(config, step)
        loss, mse = vae_loss(vae, _batch(config, step), config.kl_weight, seeding.generator(config.seed, 4, step))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        interval.append(mse)
        done = step + 1
        if done % config.log_every == 0 or done == config.steps:
            mean_mse = sum(interval) / len(interval)
            elapsed = time.monotonic() - began
            logbook.write(step=done, mse=round(mean_mse, 7), psnr=round(psnr_from_mse(mean_mse), 2),
                          lr=optimizer.param_groups[0]["lr"], elapsed_s=round(elapsed, 1))
            if progress:
                progress(done, config.steps, mean_mse, elapsed / (done - start) * (config.steps - done))
            interval = []
        if done % config.checkpoint_every == 0 or done == config.steps:
            checkpoint.save(root, done, {"model": vae.state_dict()}, optimizer.state_dict(), {"config": asdict(config)})


def psnr_from_mse(mse: float, value_range: float = 2.0) -> float:
    """PSNR in dB of an MSE measured on pixels spanning value_range ([-1, 1] spans 2)."""
    return 10 * math.log10(value_range**2 / max(mse, 1e-12))


@torch.no_grad()
def encode_renders(vae, seeds: list[int], size: int, batch_size: int = 32) -> Iterator:
    """The VAE's posterior (a DiagonalGaussianDistribution) of each batch of renders of the given seeds."""
    with single_frame_convs(vae):
        for start in range(0, len(seeds), batch_size):
            yield vae.encode(render_batch(seeds[start:start + batch_size], size)).latent_dist


def latent_statistics(vae, seeds: list[int], size: int, batch_size: int = 32) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the posterior means over renders of the given seeds."""
    latents = [posterior.mode().float() for posterior in encode_renders(vae, seeds, size, batch_size)]
    stacked = torch.cat(latents).transpose(0, 1).flatten(1)
    return stacked.mean(dim=1).tolist(), stacked.std(dim=1).tolist()


@torch.no_grad()
def reconstruction_psnr(vae, seeds: list[int], size: int, batch_size: int = 32) -> float:
    """PSNR (dB, on 8-bit pixels) of encode (posterior mean) then decode, over renders of the given seeds."""
    squared, count = 0.0, 0
    with single_frame_convs(vae):
        for start in range(0, len(seeds), batch_size):
            pixels = render_batch(seeds[start:start + batch_size], size)
            reconstruction = vae.decode(vae.encode(pixels).latent_dist.mode()).sample
            as_bytes = ((reconstruction + 1) * 127.5).round().clamp(0, 255)
            squared += float(((as_bytes - (pixels + 1) * 127.5) ** 2).sum())
            count += pixels.numel()
    return psnr_from_mse(squared / count, 255.0)
