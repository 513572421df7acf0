"""LoRAs in a run: our file through diffusers' own loader gives our image; runs depend only on their own
settings (a run without LoRAs after one with them is the plain run); weights change and files switch without
reloading the base model; the CLI's --lora ends up in the PNG."""

from __future__ import annotations

import os

import pytest
import torch

from engine.cli import main, parse_lora
from engine.errors import LoraError
from engine.lora import active
from engine.lora.files import save_lora
from engine.metadata import read_parameters
from engine.settings import LoraChoice
from tests.engine.lora.conftest import known_lora, with_peft_lora, write_format
from tests.engine.test_qwen_image_parity import assert_close, generators

PROMPT = "a red circle in the top left on a blue background"
RUN = dict(negative_prompt="blurry", width=64, height=48, steps=4, cfg=4.0, seed=42)
TARGETS = ["to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj", "to_out.0", "to_add_out",
           "img_mlp.net.2", "img_mod.1", "txt_mlp.net.2", "txt_mod.1"]  # REFERENCE.md's Qwen-Image targets


@pytest.fixture(scope="module")
def lora_file(tiny_model, tmp_path_factory):
    """A LoRA as our trainer saves it: peft's state of an adapter on the transformer, through save_lora."""
    _, state = with_peft_lora(tiny_model.modules.transformer, rank=4, alpha=2, targets=TARGETS, seed=1, scale=0.3)
    return save_lora(tmp_path_factory.mktemp("loras") / "star.safetensors", state,
                     rank=4, alpha=2, base_model="tiny", trigger_words=["star"], steps=10)


@pytest.fixture()
def model(tiny_model):
    """The shared tiny model, with no LoRA left on it afterwards whatever the test did."""
    yield tiny_model
    tiny_model.loras.clear()
    assert not any(module._forward_hooks for module in tiny_model.modules.transformer.modules())


@pytest.fixture(scope="module")
def reference_with_lora(tiny_qwen_dir, lora_file):
    from diffusers import QwenImagePipeline

    pipe = QwenImagePipeline.from_pretrained(str(tiny_qwen_dir), torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(lora_file), adapter_name="star")
    return pipe


@pytest.mark.parametrize("weight", [1.0, 0.6])
def test_image_matches_diffusers_when_it_loads_our_lora_file(model, reference_with_lora, lora_file, weight):
    reference_with_lora.set_adapters(["star"], [weight])
    theirs = reference_with_lora(PROMPT, negative_prompt=RUN["negative_prompt"], true_cfg_scale=RUN["cfg"],
                                 width=RUN["width"], height=RUN["height"], num_inference_steps=RUN["steps"],
                                 generator=generators(RUN["seed"], 1), output_type="pt").images
    ours = model.generate(PROMPT, loras=[LoraChoice(str(lora_file), weight)], **RUN)
    assert_close(ours.pixels, theirs)
    plain = model.generate(PROMPT, **RUN)
    assert (plain.pixels - theirs).abs().max() > 1e-2  # the LoRA changes the picture: the match is not trivial


def test_run_without_loras_equals_the_plain_run_when_one_with_loras_came_before(model, lora_file, tmp_path):
    plain = model.generate(PROMPT, **RUN)
    other = write_format(known_lora(model.modules.transformer, seed=3), "kohya", tmp_path / "kohya.safetensors")
    with_loras = model.generate(PROMPT, loras=[LoraChoice(str(lora_file), 0.8), LoraChoice(str(other), -1.0)], **RUN)
    assert (with_loras.pixels - plain.pixels).abs().max() > 1e-2
    again = model.generate(PROMPT, **RUN)
    assert torch.equal(again.pixels, plain.pixels)


def test_same_settings_give_the_same_image_whatever_ran_before(model, lora_file, tmp_path):
    other = write_format(known_lora(model.modules.transformer, seed=4), "peft-adapter", tmp_path / "d.safetensors")
    both = [LoraChoice(str(lora_file), 0.5), LoraChoice(str(other), 0.7)]
    first = model.generate(PROMPT, loras=both, **RUN)
    model.generate(PROMPT, loras=[LoraChoice(str(other), 2.0)], **RUN)
    assert torch.equal(model.generate(PROMPT, loras=both, **RUN).pixels, first.pixels)


def test_weight_change_and_removal_reuse_the_loaded_file(model, lora_file, monkeypatch):
    reads = []
    original = active.read_lora_tensors
    monkeypatch.setattr(active, "read_lora_tensors", lambda path: reads.append(path) or original(path))
    for weight in (1.0, 0.3, 0.0, 0.3):
        model.generate(PROMPT, loras=[LoraChoice(str(lora_file), weight)], **RUN)
        assert model.loras.stack.weight(str(lora_file.resolve())) == weight
    assert len(reads) == 1
    model.generate(PROMPT, **RUN)
    assert model.loras.stack.keys == []


def test_lora_is_read_again_when_its_file_changes(model, tmp_path):
    path = write_format(known_lora(model.modules.transformer, seed=5), "diffusers", tmp_path / "grows.safetensors")
    first = model.generate(PROMPT, loras=[LoraChoice(str(path))], **RUN)
    write_format(known_lora(model.modules.transformer, seed=6), "diffusers", path)  # a newer checkpoint, same name
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    second = model.generate(PROMPT, loras=[LoraChoice(str(path))], **RUN)
    assert (second.pixels - first.pixels).abs().max() > 1e-3


def test_error_leaves_the_previous_loras_in_place_if_a_new_file_is_for_another_model(model, lora_file, tmp_path):
    from safetensors.torch import save_file

    flux = tmp_path / "flux.safetensors"
    save_file({"double_blocks.0.img_attn.qkv.lora_A.weight": torch.zeros(2, 32),
               "double_blocks.0.img_attn.qkv.lora_B.weight": torch.zeros(96, 2)}, str(flux))
    model.generate(PROMPT, loras=[LoraChoice(str(lora_file), 0.5)], **RUN)
    with pytest.raises(LoraError) as error:
        model.generate(PROMPT, loras=[LoraChoice(str(flux))], **RUN)
    assert str(error.value) == "flux.safetensors looks like a LoRA for FLUX.1, not Qwen-Image. " \
                               "Use a LoRA made for Qwen-Image."
    assert model.loras.stack.keys == [str(lora_file.resolve())]


def test_error_raised_if_the_same_lora_is_chosen_twice(model, lora_file):
    with pytest.raises(LoraError) as error:
        model.generate(PROMPT, loras=[LoraChoice(str(lora_file)), LoraChoice(str(lora_file), 0.5)], **RUN)
    assert str(error.value) == f"The LoRA {lora_file} is chosen twice. Choose it once, with one weight."


def test_loras_follow_the_transformer_when_a_plan_builds_it_again(model, lora_file, tiny_qwen_dir):
    from diffusers import QwenImageTransformer2DModel

    model.loras.use(model.modules.transformer, [LoraChoice(str(lora_file))])
    rebuilt = QwenImageTransformer2DModel.from_pretrained(tiny_qwen_dir / "transformer", torch_dtype=torch.float32)
    model.loras.use(rebuilt, [LoraChoice(str(lora_file))])
    assert not any(module._forward_hooks for module in model.modules.transformer.modules())
    assert sum(bool(module._forward_hooks) for module in rebuilt.modules()) == 2 * len(TARGETS)
    model.loras.use(model.modules.transformer, [])


# ---- the CLI


def run_cli(capsys, *arguments) -> tuple[int, str, str]:
    code = main([str(argument) for argument in arguments])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_writes_the_loras_into_the_png_when_given_lora_options(capsys, tiny_qwen_dir, lora_file, tmp_path):
    other = write_format(known_lora(_transformer(tiny_qwen_dir), seed=7), "comfyui", tmp_path / "comfy.safetensors")
    common = ["generate", "--model", tiny_qwen_dir, "--prompt", PROMPT, "--width", "64", "--height", "48",
              "--steps", "3", "--seed", "5"]
    code, _, err = run_cli(capsys, *common, "--lora", f"{lora_file}:0.8", "--lora", other, "--out", tmp_path / "l.png")
    assert code == 0, err
    assert read_parameters(tmp_path / "l.png")["loras"] == [
        {"name": "star.safetensors", "path": str(lora_file), "weight": 0.8},
        {"name": "comfy.safetensors", "path": str(other), "weight": 1.0}]
    assert run_cli(capsys, *common, "--out", tmp_path / "plain.png")[0] == 0
    assert read_parameters(tmp_path / "plain.png")["loras"] == []
    with_lora = list(open_pixels(tmp_path / "l.png"))
    assert with_lora != list(open_pixels(tmp_path / "plain.png"))


def open_pixels(path):
    from PIL import Image

    with Image.open(path) as image:
        return list(image.getdata())


def _transformer(tiny_qwen_dir):
    from diffusers import QwenImageTransformer2DModel

    return QwenImageTransformer2DModel.from_pretrained(tiny_qwen_dir / "transformer")


@pytest.mark.parametrize(("option", "expected"), [
    ("star.safetensors:abc", "error: --lora star.safetensors:abc: the weight after the last ':' must be a number, "
                             "got 'abc'. Write --lora FILE or --lora FILE:WEIGHT, e.g. --lora star.safetensors:0.8."),
    ("star.safetensors:9", "error: LoRA weight must be a number from -4 to 4, got 9.0 for star.safetensors. "
                           "1 applies the LoRA as trained."),
    ("missing.safetensors:0.5", "error: The LoRA file missing.safetensors does not exist. "
                                "Check the path, or pick the LoRA again."),
])
def test_cli_exits_2_with_one_line_if_lora_option_is_bad(capsys, tmp_path, option, expected):
    code, _, err = run_cli(capsys, "generate", "--prompt", "x", "--lora", option, "--out", tmp_path / "x.png")
    assert code == 2
    assert err.strip().splitlines() == [expected]


@pytest.mark.parametrize(("text", "choice"), [
    ("star.safetensors", LoraChoice("star.safetensors", 1.0)),
    ("star.safetensors:0.5", LoraChoice("star.safetensors", 0.5)),
    ("loras/star.safetensors:-1", LoraChoice("loras/star.safetensors", -1.0)),
    (r"C:\loras\star.safetensors", LoraChoice(r"C:\loras\star.safetensors", 1.0)),
    (r"C:\loras\star.safetensors:0.75", LoraChoice(r"C:\loras\star.safetensors", 0.75)),
    ("C:star.safetensors", LoraChoice("C:star.safetensors", 1.0)),
])
def test_lora_option_splits_at_the_last_colon_only_before_a_weight(text, choice):
    assert parse_lora(text) == choice
