"""The LoRA pickers of Text to Image: what the LoRA folder offers, the settings they make (paths inside the folder
only), the trigger words under each, the LoRAs an image records, and restoring the pickers from it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from gradio_client import Client
from gradio_client.exceptions import AppError
from PIL import Image

from engine.errors import LoraError
from engine.lora.files import save_lora
from engine.metadata import parameters_for, read_parameters, save_png
from engine.settings import GenerateSettings, LoraChoice
from engine.weights import read_header
from studio.config import StudioConfig
from studio.history import read_recipe
from studio.lora_pickers import (
    DEFAULT_WEIGHT,
    NONE,
    ROWS,
    chosen_loras,
    lora_choices,
    lora_names,
    restored_values,
    trigger_text,
)
from studio.tabs.text_to_image import describe
from tests.studio.conftest import TINY

# Layers of the tiny transformer's image path: a change there shows in every image.
TARGETS = ("transformer_blocks.0.attn.to_q", "transformer_blocks.0.img_mlp.net.2", "transformer_blocks.1.img_mlp.net.2",
           "proj_out")


def make_lora(path: Path, tiny_qwen_dir: Path, *, seed: int = 0, rank: int = 4, trigger_words=("zorb",),
              base_model: str = TINY) -> Path:
    """A LoRA for the tiny model: a random low-rank delta of a few layers, written by the engine's own writer."""
    shapes = {tensor.name.removesuffix(".weight"): tensor.shape
              for shard in (tiny_qwen_dir / "transformer").glob("*.safetensors")
              for tensor in read_header(shard).tensors}
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for layer in TARGETS:
        out_features, in_features = shapes[layer]
        state[f"{layer}.lora_A.weight"] = torch.randn(rank, in_features, generator=generator) * 0.5
        state[f"{layer}.lora_B.weight"] = torch.randn(out_features, rank, generator=generator) * 0.5
    return save_lora(path, state, rank=rank, alpha=float(rank), base_model=base_model, trigger_words=trigger_words)


@pytest.fixture()
def config(tmp_path) -> StudioConfig:
    return StudioConfig(models_dir=tmp_path / "models", outputs_dir=tmp_path / "outputs")


@pytest.fixture()
def loras(config, tiny_qwen_dir) -> StudioConfig:
    """Three LoRAs in the folder (one in a subfolder), and a file beside them that is not one."""
    make_lora(config.loras_dir / "star.safetensors", tiny_qwen_dir, trigger_words=("zorb", "blue star"))
    make_lora(config.loras_dir / "styles" / "ink.safetensors", tiny_qwen_dir, seed=1, trigger_words=())
    make_lora(config.loras_dir / "plain.safetensors", tiny_qwen_dir, seed=2, base_model="")
    (config.loras_dir / "notes.txt").write_text("not a LoRA")
    return config


def test_the_pickers_offer_every_lora_file_of_the_folder_by_name(loras):
    assert lora_names(loras) == ["plain.safetensors", "star.safetensors", "styles/ink.safetensors"]
    assert lora_choices(lora_names(loras)) == [("None", NONE), ("plain", "plain.safetensors"),
                                               ("star", "star.safetensors"), ("styles/ink", "styles/ink.safetensors")]


def test_an_absent_lora_folder_offers_nothing(config):
    assert lora_names(config) == []


def test_the_picked_loras_become_absolute_paths_inside_the_folder_with_their_weights(loras):
    folder = loras.loras_dir.resolve()
    chosen = chosen_loras(loras, ["star.safetensors", 0.5, NONE, 1.0, "styles/ink.safetensors", -1.25, None, 1.0])
    assert chosen == (LoraChoice(str(folder / "star.safetensors"), 0.5),
                      LoraChoice(str(folder / "styles" / "ink.safetensors"), -1.25))
    assert all(Path(choice.path).is_absolute() and Path(choice.path).is_file() for choice in chosen)
    assert chosen_loras(loras, [NONE, 1.0] * ROWS) == ()


@pytest.mark.parametrize("name", ["../outside.safetensors", "{outside}", "notes.txt", "gone.safetensors"])
def test_error_raised_if_a_picker_names_a_file_the_lora_folder_does_not_list(loras, tiny_qwen_dir, name):
    outside = make_lora(loras.models_dir / "outside.safetensors", tiny_qwen_dir)
    name = name.format(outside=outside)
    with pytest.raises(LoraError) as refused:
        chosen_loras(loras, ["star.safetensors", 1.0, name, 1.0])
    assert str(refused.value) == (
        f"The LoRA '{name}' is not in the LoRA folder ({loras.loras_dir}). Pick one from the list; to add one, put "
        "its .safetensors file in that folder and press Refresh the list.")


def test_error_raised_if_the_same_lora_is_picked_twice(loras):
    with pytest.raises(LoraError) as refused:
        chosen_loras(loras, ["star.safetensors", 1.0, "star.safetensors", 0.5])
    assert str(refused.value) == "The LoRA 'star.safetensors' is picked twice. Pick it once and set its weight."


def test_each_picker_shows_the_trigger_words_its_file_records(loras):
    assert trigger_text(loras, "star.safetensors") == f"Trigger words: `zorb`, `blue star` · made for {TINY}"
    assert trigger_text(loras, "styles/ink.safetensors") == f"No trigger words recorded in this file · made for {TINY}."
    assert trigger_text(loras, "plain.safetensors") == "Trigger words: `zorb`"
    assert trigger_text(loras, NONE) == ""


def test_a_picker_naming_a_missing_or_damaged_file_says_so_under_it(loras):
    assert trigger_text(loras, "gone.safetensors") == (
        f"**Cannot use this LoRA**: The LoRA 'gone.safetensors' is not in the LoRA folder ({loras.loras_dir}). Pick "
        "one from the list; to add one, put its .safetensors file in that folder and press Refresh the list.")
    (loras.loras_dir / "broken.safetensors").write_bytes(b"\x00" * 3)
    assert trigger_text(loras, "broken.safetensors").startswith("**Cannot use this LoRA**: Not a usable LoRA: ")


def recorded(loras: list[LoraChoice], path: Path) -> GenerateSettings:
    """The settings read back from a PNG saved the way the studio saves its images."""
    settings = GenerateSettings("a star", width=64, height=64, seed=9, loras=loras)
    png = save_png(Image.new("RGB", (64, 64)), path, parameters_for(settings, TINY, 9))
    return read_recipe(png).settings


def test_the_image_records_each_lora_by_name_path_and_weight(loras, tmp_path):
    star = str(loras.loras_dir.resolve() / "star.safetensors")
    settings = GenerateSettings("a star", width=64, height=64, seed=9, loras=[LoraChoice(star, 0.75)])
    png = save_png(Image.new("RGB", (64, 64)), tmp_path / "x.png", parameters_for(settings, TINY, 9))
    assert read_parameters(png)["loras"] == [{"name": "star.safetensors", "path": star, "weight": 0.75}]
    assert describe(str(png)).startswith(f"{TINY} · seed 9 · 50 steps · CFG 4 · 64×64 (1:1) · LoRA star 0.75")


def test_restoring_an_image_sets_the_pickers_to_its_loras_and_weights(loras, tmp_path):
    folder = loras.loras_dir.resolve()
    settings = recorded([LoraChoice(str(folder / "styles" / "ink.safetensors"), -0.5),
                         LoraChoice(str(folder / "star.safetensors"), 1.5)], tmp_path / "x.png")
    values, warnings = restored_values(loras, settings.loras)
    assert values == ["styles/ink.safetensors", -0.5, "star.safetensors", 1.5] + [NONE, DEFAULT_WEIGHT] * (ROWS - 2)
    assert warnings == []


def test_a_lora_recorded_on_another_machine_is_found_here_by_its_file_name(loras, tmp_path):
    settings = recorded([LoraChoice("/home/someone/loras/star.safetensors", 0.8)], tmp_path / "x.png")
    assert restored_values(loras, settings.loras)[0][:2] == ["star.safetensors", 0.8]


def test_a_lora_no_longer_here_is_named_in_a_warning_and_the_others_are_restored(loras, tmp_path):
    folder = loras.loras_dir.resolve()
    settings = recorded([LoraChoice(str(folder / "deleted.safetensors"), 0.7),
                         LoraChoice(str(folder / "star.safetensors"), 0.3)], tmp_path / "x.png")
    values, warnings = restored_values(loras, settings.loras)
    assert values == ["star.safetensors", 0.3] + [NONE, DEFAULT_WEIGHT] * (ROWS - 1)
    assert warnings == [f"The LoRA 'deleted.safetensors' recorded in the image is not in the LoRA folder "
                        f"({loras.loras_dir}); its picker was left empty."]


def test_weights_beyond_the_sliders_and_loras_beyond_the_rows_are_said(loras, tmp_path):
    folder = loras.loras_dir.resolve()
    names = ["star.safetensors", "plain.safetensors", "styles/ink.safetensors", "star.safetensors", "plain.safetensors"]
    values, warnings = restored_values(loras, [LoraChoice(str(folder / names[0]), 3.0)] +
                                       [LoraChoice(str(folder / name), 0.5) for name in names[1:]])
    assert values == ["star.safetensors", 2.0] + [value for name in names[1:ROWS] for value in (name, 0.5)]
    assert warnings == ["The LoRA 'star.safetensors' was used at weight 3; the pickers go from -2 to 2, so it is "
                        "set to 2.", f"The image used 5 LoRAs; the first {ROWS} were restored."]


def test_an_image_without_loras_empties_the_pickers(loras, tmp_path):
    assert restored_values(loras, recorded([], tmp_path / "x.png").loras) == ([NONE, DEFAULT_WEIGHT] * ROWS, [])


@pytest.fixture()
def studio_lora(studio, tiny_qwen_dir) -> str:
    """A LoRA in the running studio's LoRA folder."""
    make_lora(studio.services.config.loras_dir / "api-star.safetensors", tiny_qwen_dir, seed=5)
    return "api-star.safetensors"


def generate(client: Client, **overrides) -> str:
    values = dict(preset_name=TINY, prompt="a star", negative=" ", width=64, height=64, steps=3, cfg=4.0, seed=21,
                  count=1, input_image=None, strength=0.6)
    values.update(overrides)
    return client.submit(**values, api_name="/generate").result()[1]


def pixels(path: str) -> list:
    return list(Image.open(path).getdata())


def test_generate_applies_the_picked_lora_records_it_and_a_run_without_it_is_plain_again(studio, studio_lora):
    client = Client(studio.url, verbose=False)
    plain = generate(client)
    with_lora = generate(client, lora_1=studio_lora, weight_1=0.8)
    assert pixels(with_lora) != pixels(plain)
    assert read_parameters(Image.open(with_lora))["loras"] == [
        {"name": studio_lora, "path": str(studio.services.config.loras_dir.resolve() / studio_lora), "weight": 0.8}]
    assert read_parameters(Image.open(plain))["loras"] == []
    assert pixels(generate(client)) == pixels(plain)
    assert pixels(generate(client, lora_3=studio_lora, weight_3=0.0)) == pixels(plain)  # weight 0: off


def test_generate_refuses_a_lora_outside_the_folder_with_a_readable_message(studio, studio_lora):
    client = Client(studio.url, verbose=False)
    outside = studio.services.config.models_dir / "elsewhere.safetensors"
    with pytest.raises(AppError) as refused:
        generate(client, lora_2=str(outside))
    assert f"The LoRA '{outside}' is not in the LoRA folder ({studio.services.config.loras_dir})." in str(refused.value)
