"""Turn the trained VAE's latent into its principal directions, with the weak ones made louder.

The shapes world's latents are very redundant: over 16 channels, 3 principal directions carry 93% of the
variance, and what tells a small square from a small circle (its corners) lies in directions 4 and 5, at 2.8%
and 1.8% of it. Flow matching adds the same noise to every direction, so at any noise level those directions
are drowned long before the layout is, and the transformer learns to draw a small shape as a round blob.

This rewrites the VAE so its latent is z' = G V^T S^-1 (z - m): m and S the per-channel mean and std of the
posterior means, V the principal directions of that normalized latent (strongest first), G a gain per
direction that lifts each one's variance to at least `floor`, by at most `max_gain`. Both 1x1 convolutions
around the latent absorb the map (quant_conv on the way in, post_quant_conv on the way out), so encode
then decode is unchanged, the files keep the Qwen-Image VAE's architecture and layout, and latents_mean /
latents_std become 0 / 1 because z' is already what the transformer should see.

The shipped recipe leaves it off (Recipe.latent_floor = 0): measured, it did not raise the shape class; the
recipe's comment has the figures.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.toyworld.vae_training import encode_renders


@dataclass(frozen=True)
class LatentBasis:
    """What fold_latent_basis needs, measured on the VAE; also what the build reports and the tests check."""

    mean: torch.Tensor  # (C,) per-channel mean of the posterior means
    std: torch.Tensor  # (C,) per-channel std of the posterior means
    directions: torch.Tensor  # (C, C) columns: principal directions of the normalized latent, strongest first
    variances: torch.Tensor  # (C,) the variance along each direction before the gain
    gains: torch.Tensor  # (C,) what each direction is multiplied by
    posterior_variance: torch.Tensor  # (C,) each channel's posterior variance, averaged over the renders

    def forward_map(self) -> torch.Tensor:
        """A with z' = A (z - mean)."""
        return self.gains[:, None] * self.directions.T / self.std[None, :]

    def inverse_map(self) -> torch.Tensor:
        """A^-1 with z = mean + A^-1 z'."""
        return self.std[:, None] * self.directions / self.gains[None, :]


def direction_gains(variances: torch.Tensor, floor: float, max_gain: float) -> torch.Tensor:
    """sqrt(floor / variance) clamped to [1, max_gain]: strong directions stay as they are, weak ones rise to
    the floor, and the near-empty tail (below the VAE's own posterior noise) is not blown up without bound."""
    return (floor / variances.clamp_min(1e-12)).sqrt().clamp(1.0, max_gain)


def measure_latent_basis(vae, seeds: list[int], size: int, floor: float, max_gain: float) -> LatentBasis:
    """Mean, std, principal directions and posterior variance of the latents of renders of the given seeds."""
    means, variances = [], []
    for posterior in encode_renders(vae, seeds, size):
        means.append(posterior.mode().double())
        variances.append(posterior.var.double())
    latents = torch.cat(means).transpose(0, 1).flatten(1)  # (C, positions)
    posterior_variance = torch.cat(variances).transpose(0, 1).flatten(1).mean(dim=1)
    mean, std = latents.mean(dim=1), latents.std(dim=1)
    normalized = (latents - mean[:, None]) / std[:, None]
    spread, directions = torch.linalg.eigh(torch.cov(normalized))
    order = spread.argsort(descending=True)
    spread, directions = spread[order], directions[:, order]
    # eigh leaves each direction's sign to the solver; pin it (largest component positive) so the files
    # a seed makes do not depend on the LAPACK build.
    signs = torch.sign(directions[directions.abs().argmax(dim=0), torch.arange(len(order))])
    directions = directions * signs[None, :]
    return LatentBasis(mean, std, directions, spread, direction_gains(spread, floor, max_gain), posterior_variance)


@torch.no_grad()
def fold_latent_basis(vae, basis: LatentBasis) -> None:
    """Rewrite vae in place so its latent is basis's z'.

    The posterior's log-variance cannot follow a rotation exactly (a rotated diagonal Gaussian is not
    diagonal), so it becomes a constant per channel: the variance a rotated posterior of the measured average
    variance would have. It only matters where the pipeline samples the posterior (image-to-image), and there
    it is about 5% of a channel's spread."""
    z_dim = basis.mean.shape[0]
    forward, inverse = basis.forward_map(), basis.inverse_map()
    quant, post = vae.quant_conv, vae.post_quant_conv
    dtype = quant.weight.dtype
    mean_weight, mean_bias = quant.weight.double().flatten(1)[:z_dim], quant.bias.double()[:z_dim]
    weight = torch.cat([forward @ mean_weight, torch.zeros_like(mean_weight)])  # mean rows, log-variance rows
    bias = torch.cat([forward @ (mean_bias - basis.mean), torch.log((forward**2) @ basis.posterior_variance)])
    quant.weight.copy_(weight.view_as(quant.weight).to(dtype))
    quant.bias.copy_(bias.to(dtype))
    post_weight = post.weight.double().flatten(1)  # (C, C)
    post.bias.copy_((post_weight @ basis.mean + post.bias.double()).to(dtype))
    post.weight.copy_((post_weight @ inverse).view_as(post.weight).to(dtype))
    vae.register_to_config(latents_mean=[0.0] * z_dim, latents_std=[1.0] * z_dim)
