"""The shapes world's VAE settings: how far it downsamples, and the message for a setting out of range."""

from __future__ import annotations

import pytest
import torch

from engine.errors import SettingsError
from engine.pipelines.qwen_image import vae_scale
from engine.toyworld.vae_training import VaeTrainConfig, build_vae
from engine.training.single_frame import single_frame_convs


@pytest.mark.parametrize(("downsamples", "scale"), [(3, 8), (2, 4)])
def test_the_vae_has_one_2x_stage_per_downsample_and_the_pipeline_reads_its_scale(downsamples, scale):
    config = VaeTrainConfig(base_dim=4, downsamples=downsamples)
    vae = build_vae(config)
    assert config.scale == scale == vae_scale(vae)
    pixels = torch.zeros(1, 3, 1, 32, 48)
    with torch.no_grad(), single_frame_convs(vae):
        latents = vae.encode(pixels).latent_dist.mode()
        assert latents.shape == (1, 16, 1, 32 // scale, 48 // scale)
        assert vae.decode(latents).sample.shape == pixels.shape


def test_error_raised_for_a_downsampling_qwen_image_s_vae_cannot_have():
    with pytest.raises(SettingsError) as caught:
        VaeTrainConfig(downsamples=4)
    assert str(caught.value) == "VaeTrainConfig.downsamples must be 2 (4x) or 3 (8x, Qwen-Image's), got 4."
