"""Noise levels and loss weights against their definitions: Musubi Tuner's qwen_shift, DiffSynth-Studio's
bell-shaped weight over the shifted schedule, and the weighted loss."""

from __future__ import annotations

import math

import pytest
import torch

from engine.schedulers.flow_match import QWEN_IMAGE, constant_shift
from engine.training.config import TimestepSampling, TimestepWeighting, TrainConfig
from engine.training.objective import bell_weights, sample_noise_levels, training_sigmas


def musubi_qwen_shift(normal: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Musubi Tuner's qwen_shift as written in training/trainer_base.py (sigmoid_scale 1), latent size h x w."""
    m = (0.9 - 0.5) / (8192 - 256)
    mu = m * ((height // 2) * (width // 2)) + (0.5 - m * 256)
    shift = math.exp(mu)
    t = normal.sigmoid()
    return (t * shift) / (1 + (shift - 1) * t)


@pytest.mark.parametrize("latent_side", [8, 128, 166])
def test_qwen_shift_draws_what_musubi_draws_at_each_resolution(latent_side):
    config = TrainConfig(steps=1, timestep_sampling=TimestepSampling.QWEN_SHIFT)
    tokens = (latent_side // 2) ** 2
    sigmas, weights = sample_noise_levels(config, QWEN_IMAGE, tokens, 512, torch.Generator().manual_seed(3))
    expected = musubi_qwen_shift(torch.randn(512, generator=torch.Generator().manual_seed(3)), latent_side, latent_side)
    torch.testing.assert_close(sigmas, expected, rtol=1e-6, atol=1e-6)
    assert weights is None and 0 < sigmas.min() and sigmas.max() < 1


def test_qwen_shift_moves_draws_towards_noise_as_images_grow():
    config = TrainConfig(steps=1, timestep_sampling="qwen_shift")
    means = [float(sample_noise_levels(config, QWEN_IMAGE, tokens, 4096, torch.Generator().manual_seed(0))[0].mean())
             for tokens in (16, 4096, 6889)]
    assert 0.5 < means[0] < means[1] < means[2]  # exp(mu) > 1 always shifts above the logit-normal's 0.5


def test_qwen_shift_uses_a_static_shift_when_the_schedule_has_no_dynamic_one():
    config = TrainConfig(steps=1, timestep_sampling="qwen_shift")
    sigmas = sample_noise_levels(config, constant_shift(3.0), 64, 8, torch.Generator().manual_seed(1))[0]
    t = torch.randn(8, generator=torch.Generator().manual_seed(1)).sigmoid()
    torch.testing.assert_close(sigmas, 3 * t / (1 + 2 * t))


def test_bell_weights_follow_diffsynths_definition_over_the_1000_step_schedule():
    sigmas = training_sigmas(QWEN_IMAGE, 64)
    weights = bell_weights(sigmas)
    x = sigmas.double() * 1000
    y = torch.exp(-2 * ((x - 500) / 1000) ** 2)
    expected = (y - y.min()) * (1000 / (y - y.min()).sum())  # FlowMatchScheduler.set_training_weight
    assert weights.shape == (1000,)
    torch.testing.assert_close(weights, expected.float())
    assert weights.mean().item() == pytest.approx(1.0, abs=1e-5) and weights.min().item() == 0.0
    assert abs(float(sigmas[int(weights.argmax())]) - 0.5) < 0.01  # the top of the bell is mid-path


def test_shifted_uniform_with_bell_draws_schedule_sigmas_and_their_weights_deterministically():
    config = TrainConfig(steps=1, timestep_sampling="shifted_uniform", timestep_weighting="bell")
    first = sample_noise_levels(config, QWEN_IMAGE, 64, 256, torch.Generator().manual_seed(9))
    again = sample_noise_levels(config, QWEN_IMAGE, 64, 256, torch.Generator().manual_seed(9))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    table = training_sigmas(QWEN_IMAGE, 64)
    indices = torch.randint(1000, (256,), generator=torch.Generator().manual_seed(9))
    assert torch.equal(first[0], table[indices]) and torch.equal(first[1], bell_weights(table)[indices])
    plain = sample_noise_levels(TrainConfig(steps=1, timestep_sampling="shifted_uniform"), QWEN_IMAGE, 64, 4,
                                torch.Generator())
    assert plain[1] is None


def test_error_raised_if_the_bell_weight_is_asked_of_another_sampler():
    with pytest.raises(Exception) as caught:
        TrainConfig(steps=1, timestep_sampling="logit_normal", timestep_weighting=TimestepWeighting.BELL)
    assert str(caught.value) == ("TrainConfig.timestep_weighting bell needs timestep_sampling shifted_uniform, got "
                                 "logit_normal. The bell weight is defined over the shifted schedule's steps.")


def test_weighted_loss_is_the_weighted_mean_of_each_examples_error(tiny_model):
    from engine.training.objective import flow_matching_loss

    transformer = tiny_model.modules.transformer
    generator = torch.Generator().manual_seed(0)
    latents, noise = torch.randn(3, 16, 8, 8, generator=generator), torch.randn(3, 16, 8, 8, generator=generator)
    sigmas, embeds = torch.tensor([0.2, 0.5, 0.9]), torch.randn(3, 5, 32, generator=generator)
    with torch.no_grad():
        each = [flow_matching_loss(transformer, latents[i:i + 1], noise[i:i + 1], sigmas[i:i + 1], embeds[i:i + 1],
                                   None) for i in range(3)]
        weights = torch.tensor([0.0, 1.0, 2.0])
        weighted = flow_matching_loss(transformer, latents, noise, sigmas, embeds, None, weights)
        plain = flow_matching_loss(transformer, latents, noise, sigmas, embeds, None)
    torch.testing.assert_close(weighted, (each[1] + 2 * each[2]) / 3, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(plain, sum(each) / 3, rtol=1e-5, atol=1e-6)


class _ZeroVelocity(torch.nn.Module):
    """A stand-in transformer that predicts zero velocity, so the loss is the weighted square of the target."""

    def forward(self, hidden_states, **_):
        return (torch.zeros_like(hidden_states),)


def test_position_weights_scale_each_latent_positions_error_in_every_channel():
    from engine.training.objective import flow_matching_loss

    generator = torch.Generator().manual_seed(4)
    latents, noise = torch.randn(2, 16, 8, 8, generator=generator), torch.randn(2, 16, 8, 8, generator=generator)
    sigmas, embeds = torch.tensor([0.3, 0.7]), torch.randn(2, 5, 32, generator=generator)
    positions = torch.rand(2, 8, 8, generator=generator) * 3  # uneven, so a patch packed out of place would show
    target = noise - latents  # the velocity the model should predict
    expected = (positions[:, None] * target.pow(2)).mean()
    got = flow_matching_loss(_ZeroVelocity(), latents, noise, sigmas, embeds, None, position_weights=positions)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    ones = flow_matching_loss(_ZeroVelocity(), latents, noise, sigmas, embeds, None,
                              position_weights=torch.ones(2, 8, 8))
    torch.testing.assert_close(ones, target.pow(2).mean(), rtol=1e-5, atol=1e-6)
    both = flow_matching_loss(_ZeroVelocity(), latents, noise, sigmas, embeds, None, torch.tensor([2.0, 0.0]),
                              positions)
    torch.testing.assert_close(both, (positions[0] * target[0].pow(2)).mean(), rtol=1e-5, atol=1e-6)
