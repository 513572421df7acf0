import torch

from engine.training.single_frame import single_frame_convs


def test_vae_gives_the_same_latents_pixels_and_gradients_when_its_convs_run_in_2d(tiny_model):
    vae = tiny_model.modules.vae
    pixels = torch.rand(2, 3, 1, 32, 32) * 2 - 1

    def run():
        vae.requires_grad_(True)
        latents = vae.encode(pixels).latent_dist.mode()
        decoded = vae.decode(latents).sample
        decoded.pow(2).mean().backward()
        gradient = vae.decoder.conv_in.weight.grad.clone()
        vae.zero_grad(set_to_none=True)
        vae.requires_grad_(False)
        return latents.detach(), decoded.detach(), gradient

    expected = run()
    with single_frame_convs(vae):
        patched = run()
    for reference, value in zip(expected, patched):
        torch.testing.assert_close(value, reference, atol=1e-5, rtol=1e-4)


def test_patch_is_undone_when_the_block_ends(tiny_model):
    vae = tiny_model.modules.vae
    conv = vae.decoder.conv_in
    with single_frame_convs(vae):
        assert "forward" in vars(conv)
    assert "forward" not in vars(conv)
