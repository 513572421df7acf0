"""The flow-matching objective: draw noise levels, noise the latents, score the predicted velocity.

The model sees x_sigma = (1 - sigma) * x0 + sigma * noise and must predict noise - x0 (the schedules in
engine.schedulers.flow_match define both). It is called exactly as the pipeline calls it: packed 2x2
patches, the timestep given as sigma (the pipeline passes t / 1000), img_shapes [(1, h/2, w/2)].
"""

from __future__ import annotations

import torch

from engine.pipelines.qwen_image import PATCH, pack_latents
from engine.schedulers.flow_match import FlowMatchConfig, add_noise, flow_match_schedule, training_target
from engine.training.config import TimestepSampling, TrainConfig


def sample_sigmas(config: TrainConfig, schedule: FlowMatchConfig, image_seq_len: int, count: int,
                  generator: torch.Generator) -> torch.Tensor:
    """`count` noise levels in (0, 1], float32, drawn as config.timestep_sampling says."""
    if config.timestep_sampling is TimestepSampling.LOGIT_NORMAL:
        normal = torch.randn(count, generator=generator) * config.logit_std + config.logit_mean
        return torch.sigmoid(normal)
    sigmas = flow_match_schedule(schedule.num_train_timesteps, schedule, image_seq_len).sigmas[:-1]
    return sigmas[torch.randint(len(sigmas), (count,), generator=generator)]


def image_seq_len(latents: torch.Tensor) -> int:
    """Tokens of the packed latents (B, C, H, W): (H/2) * (W/2)."""
    return (latents.shape[-2] // PATCH) * (latents.shape[-1] // PATCH)


def flow_matching_loss(transformer: torch.nn.Module, latents: torch.Tensor, noise: torch.Tensor,
                       sigmas: torch.Tensor, embeds: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean squared error of the predicted velocity against noise - x0 for latents (B, C, H, W)."""
    noisy = add_noise(latents, noise, sigmas.to(latents.dtype))
    target = pack_latents(training_target(latents, noise))
    height, width = latents.shape[-2] // PATCH, latents.shape[-1] // PATCH
    prediction = transformer(hidden_states=pack_latents(noisy), timestep=sigmas.to(latents.dtype),
                             encoder_hidden_states=embeds, encoder_hidden_states_mask=mask,
                             img_shapes=[[(1, height, width)]] * latents.shape[0], return_dict=False)[0]
    return torch.nn.functional.mse_loss(prediction.float(), target.float())
