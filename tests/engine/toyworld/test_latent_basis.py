"""The VAE's latent turned into its principal directions (engine/toyworld/latent_basis.py)."""

from __future__ import annotations

import pytest
import torch

from engine.toyworld.latent_basis import direction_gains, fold_latent_basis, measure_latent_basis
from engine.toyworld.recipe import Recipe
from engine.toyworld.vae_training import VaeTrainConfig, build_vae, render_batch
from engine.training.single_frame import single_frame_convs

SIZE = 48
SEEDS = list(range(16))


@pytest.fixture(scope="module")
def folded():
    """A seeded random VAE before and after the fold (floor 1, gain at most 4), and the basis it used."""
    before = build_vae(VaeTrainConfig(base_dim=8, crop=48, image_size=48, images=32)).eval()
    after = build_vae(VaeTrainConfig(base_dim=8, crop=48, image_size=48, images=32)).eval()
    basis = measure_latent_basis(before, SEEDS, SIZE, floor=1.0, max_gain=4.0)
    fold_latent_basis(after, basis)
    return before, after, basis


def _posterior(vae, seeds):
    with torch.no_grad(), single_frame_convs(vae):
        return vae.encode(render_batch(seeds, SIZE)).latent_dist


def test_folding_changes_the_latent_but_not_what_the_vae_decodes(folded):
    before, after, basis = folded
    unseen = [100, 101]  # not among the renders the basis was measured on
    old, new = _posterior(before, unseen).mode(), _posterior(after, unseen).mode()
    centered = old - basis.mean.float().view(1, -1, 1, 1, 1)
    expected = torch.einsum("ij,bj...->bi...", basis.forward_map().float(), centered)
    torch.testing.assert_close(new, expected, atol=1e-4, rtol=1e-4)
    assert (new - old).abs().max() > 0.1
    with torch.no_grad():
        torch.testing.assert_close(after.decode(new).sample, before.decode(old).sample, atol=1e-4, rtol=1e-4)


def test_the_folded_latent_is_uncorrelated_with_the_weak_directions_lifted(folded):
    _, after, basis = folded
    latents = _posterior(after, SEEDS).mode().double().transpose(0, 1).flatten(1)
    covariance = torch.cov(latents)
    expected = basis.variances * basis.gains**2
    torch.testing.assert_close(covariance.diagonal(), expected, rtol=1e-3, atol=1e-6)
    off_diagonal = covariance - torch.diag(covariance.diagonal())
    assert off_diagonal.abs().max() < 1e-3 * expected.max()
    torch.testing.assert_close(latents.mean(dim=1), torch.zeros(16, dtype=torch.float64), atol=1e-4, rtol=0)
    assert after.config.latents_mean == [0.0] * 16 and after.config.latents_std == [1.0] * 16


def test_sampling_the_folded_posterior_spreads_as_much_as_the_rotated_original(folded):
    before, after, basis = folded
    torch.manual_seed(0)
    old = _posterior(before, SEEDS)
    draws = torch.stack([old.sample() - old.mode() for _ in range(8)]).double()
    rotated = torch.einsum("ij,nbj...->nbi...", basis.forward_map(), draws)
    new_spread = _posterior(after, SEEDS).var.double().mean(dim=(0, 2, 3, 4))
    torch.testing.assert_close(new_spread, rotated.pow(2).mean(dim=(0, 1, 3, 4, 5)), rtol=0.05, atol=0)


def test_gains_lift_weak_directions_to_the_floor_and_stop_at_the_cap():
    gains = direction_gains(torch.tensor([4.0, 1.0, 0.25, 0.01, 0.0]), floor=1.0, max_gain=4.0)
    assert gains.tolist() == [1.0, 1.0, 2.0, 4.0, 4.0]


def test_directions_come_strongest_first_with_a_fixed_sign(folded):
    _, _, basis = folded
    assert torch.all(basis.variances[:-1] >= basis.variances[1:])
    strongest = basis.directions.abs().argmax(dim=0)
    assert torch.all(basis.directions[strongest, torch.arange(16)] > 0)
    torch.testing.assert_close(basis.directions.T @ basis.directions, torch.eye(16, dtype=torch.float64))


@pytest.mark.parametrize(("field", "value", "message"), [
    ("latent_floor", -0.5, "latent_floor: must be 0 or more, got -0.5"),
    ("latent_max_gain", 0.5, "latent_max_gain: must be at least 1, got 0.5"),
])
def test_error_raised_for_a_latent_basis_setting_out_of_range(field, value, message):
    with pytest.raises(ValueError) as raised:
        Recipe(**{field: value})
    assert str(raised.value) == message
