"""The flow-matching objective: draw noise levels, noise the latents, score the predicted velocity.

The model sees x_sigma = (1 - sigma) * x0 + sigma * noise and must predict noise - x0 (the schedules in
engine.schedulers.flow_match define both). It is called exactly as the pipeline calls it: packed 2x2
patches, the timestep given as sigma (the pipeline passes t / 1000), img_shapes [(1, h/2, w/2)].
"""

from __future__ import annotations

import math

import torch

from engine.pipelines.qwen_image import PATCH, pack_latents
from engine.schedulers.flow_match import (FlowMatchConfig, add_noise, dynamic_shift_mu, flow_match_schedule,
                                          training_target)
from engine.training.config import TimestepSampling, TimestepWeighting, TrainConfig


def sample_sigmas(config: TrainConfig, schedule: FlowMatchConfig, image_seq_len: int, count: int,
                  generator: torch.Generator) -> torch.Tensor:
    """`count` noise levels in (0, 1], float32, drawn as config.timestep_sampling says."""
    return sample_noise_levels(config, schedule, image_seq_len, count, generator)[0]


def sample_noise_levels(config: TrainConfig, schedule: FlowMatchConfig, image_seq_len: int, count: int,
                        generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`count` noise levels in (0, 1] and their loss weights (None when config.timestep_weighting is NONE)."""
    if config.timestep_sampling is TimestepSampling.LOGIT_NORMAL:
        normal = torch.randn(count, generator=generator) * config.logit_std + config.logit_mean
        return torch.sigmoid(normal), None
    if config.timestep_sampling is TimestepSampling.QWEN_SHIFT:
        normal = torch.randn(count, generator=generator) * config.logit_std + config.logit_mean
        return qwen_shift(torch.sigmoid(normal), schedule, image_seq_len), None
    sigmas = training_sigmas(schedule, image_seq_len)
    indices = torch.randint(len(sigmas), (count,), generator=generator)
    weights = bell_weights(sigmas)[indices] if config.timestep_weighting is TimestepWeighting.BELL else None
    return sigmas[indices], weights


def training_sigmas(schedule: FlowMatchConfig, image_seq_len: int) -> torch.Tensor:
    """The num_train_timesteps sigmas (1000 for Qwen-Image) of the shifted schedule the model samples with."""
    return flow_match_schedule(schedule.num_train_timesteps, schedule, image_seq_len).sigmas[:-1]


def qwen_shift(uniform: torch.Tensor, schedule: FlowMatchConfig, image_seq_len: int) -> torch.Tensor:
    """Bend draws in (0, 1) by the shift inference uses at this size: s * t / (1 + (s - 1) * t).

    Musubi Tuner's qwen_shift (training/trainer_base.py): s = exp(mu) with mu linear in the packed token
    count from 0.5 at 256 to 0.9 at 8192, which is the Qwen-Image scheduler's own dynamic shift; here mu comes
    from the model's scheduler config, so the training levels follow whatever schedule the model samples with.
    Without the terminal stretch, as Musubi does. A config without dynamic shifting uses its static shift.
    """
    shift = math.exp(dynamic_shift_mu(image_seq_len, schedule)) if schedule.use_dynamic_shifting else schedule.shift
    return uniform * shift / (1 + (shift - 1) * uniform)


def bell_weights(sigmas: torch.Tensor) -> torch.Tensor:
    """DiffSynth-Studio's training weight per schedule step (FlowMatchScheduler.set_training_weight).

    A Gaussian bump over the timestep t = 1000 * sigma centred at 500, exp(-2 ((t - 500) / 1000)^2), lowered
    so the smallest weight is 0 and scaled so the weights average 1: uniform draws of steps keep the loss's
    scale while the middle of the path, where the velocity is hardest, counts most. For a 1000-step schedule,
    which is what training draws from (DiffSynth adds an empirical correction for other lengths, unused here).
    """
    steps = 1000
    timesteps = sigmas.double() * steps
    bump = torch.exp(-2 * ((timesteps - steps / 2) / steps) ** 2)
    lowered = bump - bump.min()
    return (lowered * (len(sigmas) / lowered.sum())).float()


def image_seq_len(latents: torch.Tensor) -> int:
    """Tokens of the packed latents (B, C, H, W): (H/2) * (W/2)."""
    return (latents.shape[-2] // PATCH) * (latents.shape[-1] // PATCH)


def flow_matching_loss(transformer: torch.nn.Module, latents: torch.Tensor, noise: torch.Tensor,
                       sigmas: torch.Tensor, embeds: torch.Tensor, mask: torch.Tensor | None,
                       weights: torch.Tensor | None = None, position_weights: torch.Tensor | None = None
                       ) -> torch.Tensor:
    """Mean squared error of the predicted velocity against noise - x0 for latents (B, C, H, W).

    With `weights` (one per example) each example's mean squared error is scaled before the batch mean.
    With `position_weights` (B, H, W) each latent position's squared error is scaled, in every channel, before
    the mean; weights averaging 1 over an image keep the loss's scale.
    """
    noisy = add_noise(latents, noise, sigmas.to(latents.dtype))
    target = pack_latents(training_target(latents, noise))
    height, width = latents.shape[-2] // PATCH, latents.shape[-1] // PATCH
    prediction = transformer(hidden_states=pack_latents(noisy), timestep=sigmas.to(latents.dtype),
                             encoder_hidden_states=embeds, encoder_hidden_states_mask=mask,
                             img_shapes=[[(1, height, width)]] * latents.shape[0], return_dict=False)[0]
    if weights is None and position_weights is None:
        return torch.nn.functional.mse_loss(prediction.float(), target.float())
    squared = (prediction.float() - target.float()).pow(2)
    if position_weights is not None:
        squared = squared * pack_latents(position_weights[:, None].expand_as(latents).float()).to(squared.device)
    per_example = squared.mean(dim=(1, 2))
    if weights is None:
        return per_example.mean()
    return (per_example * weights.to(per_example.device)).mean()
