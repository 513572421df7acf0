"""Our Qwen-Image pipeline against diffusers' QwenImagePipeline / QwenImageImg2ImgPipeline on the same files,
seed and settings: the images must agree to 1e-4 in float32 (DESIGN.md, "Correctness without real weights")."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def reference(tiny_qwen_dir):
    from diffusers import QwenImagePipeline

    pipe = QwenImagePipeline.from_pretrained(str(tiny_qwen_dir), torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def reference_img2img(reference):
    from diffusers import QwenImageImg2ImgPipeline

    return QwenImageImg2ImgPipeline.from_pipe(reference)


def generators(seed: int, count: int) -> list[torch.Generator]:
    return [torch.Generator("cpu").manual_seed(seed + index) for index in range(count)]


def assert_close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert ours.shape == theirs.shape
    difference = (ours - theirs).abs().max().item()
    assert difference <= TOLERANCE, f"max abs difference {difference:.3g} > {TOLERANCE}"
    # A blank or saturated picture would agree trivially; these must carry real signal.
    assert 0.02 < theirs.std().item()


@pytest.mark.parametrize(
    ("width", "height", "cfg", "negative"),
    [(64, 64, 1.0, None), (96, 48, 1.0, None), (64, 64, 4.0, "blurry, low quality"), (48, 80, 4.0, " ")],
    ids=["square-cfg1", "wide-cfg1", "square-cfg4-negative", "tall-cfg4-blank-negative"],
)
def test_text_to_image_matches_diffusers_when_same_files_seed_and_settings(
        tiny_model, reference, width, height, cfg, negative):
    prompt = "a red circle in the top left on a blue background"
    ours = tiny_model.generate(prompt, negative_prompt=negative, width=width, height=height, steps=5, cfg=cfg, seed=42)
    theirs = reference(prompt, negative_prompt=negative if cfg > 1 else None, true_cfg_scale=cfg, width=width,
                       height=height, num_inference_steps=5, generator=generators(42, 1), output_type="pt").images
    assert_close(ours.pixels, theirs)


def test_batch_of_two_matches_diffusers_when_seeds_follow_each_other(tiny_model, reference):
    prompt = "a small green square at the bottom"
    ours = tiny_model.generate(prompt, negative_prompt="red", width=64, height=48, steps=4, cfg=4.0, seed=7, count=2)
    theirs = reference(prompt, negative_prompt="red", true_cfg_scale=4.0, width=64, height=48, num_inference_steps=4,
                       num_images_per_prompt=2, generator=generators(7, 2), output_type="pt").images
    assert ours.seeds == [7, 8]
    assert_close(ours.pixels, theirs)
    assert (ours.pixels[0] - ours.pixels[1]).abs().max() > 0.05  # two seeds, two different pictures


def test_image_to_image_matches_diffusers_when_strength_is_0_6(tiny_model, reference_img2img):
    prompt = "a yellow triangle on the right"
    source = Image.effect_mandelbrot((80, 64), (-2.0, -1.2, 0.8, 1.2), 60).convert("RGB")
    ours = tiny_model.generate(prompt, input_image=source, strength=0.6, width=80, height=64, steps=10,
                               cfg=4.0, negative_prompt=" ", seed=3)
    theirs = reference_img2img(prompt, image=source, strength=0.6, negative_prompt=" ", true_cfg_scale=4.0,
                               width=80, height=64, num_inference_steps=10, generator=generators(3, 1),
                               output_type="pt").images
    assert_close(ours.pixels, theirs)


def test_each_image_of_a_batch_equals_its_single_run_when_image_to_image(tiny_model, reference_img2img):
    """diffusers samples every batch image's VAE posterior with the first generator; we keep one generator per
    image, so image i of a batch is exactly the single-image run with seed+i (same seed = same image)."""
    source = Image.effect_mandelbrot((64, 64), (-2.0, -1.2, 0.8, 1.2), 40).convert("RGB")
    batch = tiny_model.generate("a circle", input_image=source, strength=0.6, width=64, height=64, steps=6,
                                cfg=1.0, seed=11, count=2)
    for index, seed in enumerate((11, 12)):
        single = reference_img2img("a circle", image=source, strength=0.6, true_cfg_scale=1.0, width=64, height=64,
                                   num_inference_steps=6, generator=generators(seed, 1), output_type="pt").images
        assert_close(batch.pixels[index:index + 1], single)


@pytest.fixture(scope="module")
def four_x_repo(tmp_path_factory):
    """The tiny repo with a VAE of two 2x stages (4 pixels per latent position), like the shapes world's."""
    from engine.toyworld.tiny_qwen_image import TinySizes, build_tiny_qwen_image

    return build_tiny_qwen_image(tmp_path_factory.mktemp("tiny-4x") / "Qwen-Image", TinySizes(vae_downsamples=2),
                                 seed=1)


def test_a_vae_that_downsamples_4x_gives_the_same_images_as_diffusers(four_x_repo):
    """diffusers reads the VAE's scale from its config; so must we, or the latents get the wrong size."""
    import engine
    from diffusers import QwenImageImg2ImgPipeline, QwenImagePipeline

    model = engine.load(four_x_repo, device="cpu")
    pipe = QwenImagePipeline.from_pretrained(str(four_x_repo), torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    prompt = "a small green square at the bottom"
    ours = model.generate(prompt, width=64, height=48, steps=4, cfg=4.0, negative_prompt=" ", seed=5)
    theirs = pipe(prompt, negative_prompt=" ", true_cfg_scale=4.0, width=64, height=48, num_inference_steps=4,
                  generator=generators(5, 1), output_type="pt").images
    assert_close(ours.pixels, theirs)

    source = Image.effect_mandelbrot((64, 64), (-2.0, -1.2, 0.8, 1.2), 40).convert("RGB")
    ours = model.generate(prompt, input_image=source, strength=0.6, width=64, height=64, steps=6, cfg=1.0, seed=9)
    theirs = QwenImageImg2ImgPipeline.from_pipe(pipe)(
        prompt, image=source, strength=0.6, true_cfg_scale=1.0, width=64, height=64, num_inference_steps=6,
        generator=generators(9, 1), output_type="pt").images
    assert_close(ours.pixels, theirs)
