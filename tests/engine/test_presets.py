"""Presets: the shipped files read as intended, and a malformed file names the file and the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.errors import PresetError
from engine.presets import (PRESETS_DIR, Family, Role, Tab, TrainingDefaults, load_preset, preset_for_folder,
                            preset_names, read_preset)

GOOD = """
name = "mine"
family = "qwen_image"
tabs = ["text_to_image"]
[hub]
modelscope = "Someone/Model"
[defaults]
width = 512
height = 512
"""


def write(tmp_path: Path, text: str, name: str = "mine") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def test_shipped_qwen_presets_read_with_their_defaults():
    assert {"qwen-image", "qwen-image-2512", "qwen-image-distill-full"} <= set(preset_names())
    base = load_preset("qwen-image")
    assert base.family == Family.QWEN_IMAGE and base.tabs == (Tab.TEXT_TO_IMAGE,)
    assert (base.defaults.width, base.defaults.height, base.defaults.steps, base.defaults.cfg) == (1328, 1328, 50, 4.0)
    assert base.sizes == ((1328, 1328), (1664, 928), (928, 1664), (1472, 1140), (1140, 1472))
    assert base.component(Role.TRANSFORMER).repo == "Qwen/Qwen-Image"
    assert load_preset("qwen-image-2512").component(Role.VAE).repo == "Qwen/Qwen-Image-2512"


def test_distill_full_uses_cfg_1_and_15_steps_and_borrows_its_transformer_config():
    preset = load_preset("qwen-image-distill-full")
    assert (preset.defaults.steps, preset.defaults.cfg) == (15, 1.0)
    transformer = preset.component(Role.TRANSFORMER)
    assert (transformer.repo, transformer.subfolder) == ("DiffSynth-Studio/Qwen-Image-Distill-Full", "")
    assert (transformer.config_repo, transformer.config_subfolder) == ("Qwen/Qwen-Image", "transformer")
    assert preset.component(Role.TEXT_ENCODER).repo == "Qwen/Qwen-Image"


def test_minimal_preset_gets_family_defaults(tmp_path):
    preset = read_preset(write(tmp_path, GOOD))
    assert preset.defaults.steps == 50 and preset.defaults.cfg == 4.0 and preset.sizes == ((512, 512),)
    assert preset.component(Role.TOKENIZER).subfolder == "tokenizer"


def test_training_defaults_come_from_the_preset_or_the_common_starting_points(tmp_path):
    assert read_preset(write(tmp_path, GOOD)).training == TrainingDefaults(steps=600, rank=16, learning_rate=1e-4,
                                                                            batch_size=1, sample_every=100)
    tiny = load_preset("tiny-shapes").training  # the star LoRA recipe (engine/toyworld/star_lora.py)
    assert (tiny.steps, tiny.rank, tiny.learning_rate, tiny.batch_size) == (1500, 16, 1e-3, 8)


@pytest.mark.parametrize(("change", "message"), [
    (lambda t: t.replace('name = "mine"', 'name = "other"'),
     "field 'name' must equal the file name 'mine', got 'other'."),
    (lambda t: t.replace('family = "qwen_image"', 'family = "sdxl"'),
     "field 'family' must be one of qwen_image, got 'sdxl'."),
    (lambda t: t.replace('tabs = ["text_to_image"]', 'tabs = ["painting"]'),
     "field 'tabs[0]' must be one of text_to_image, edit, inpaint, regions, video, train, got 'painting'."),
    (lambda t: t.replace("width = 512", "width = 0"), "field 'defaults.width' must be a positive integer, got 0."),
    (lambda t: t.replace("width = 512", 'width = "wide"'), "field 'defaults.width' must be int, got 'wide'."),
    (lambda t: t.replace("width = 512", "width = 500"),
     "field 'defaults.width' (500) must be a multiple of 16 within [16, 2048]."),
    (lambda t: t + "steps = 0\n", "field 'defaults.steps' must be a positive integer, got 0."),
    (lambda t: t + "colour = 1\n", "field 'defaults.colour' is not a known field (known: cfg, height, "
                                   "negative_prompt, steps, width)."),
    (lambda t: t.replace('modelscope = "Someone/Model"', ""),
     "field 'hub.modelscope' is missing (a preset needs a hub repo or a shipped folder)."),
    (lambda t: t + "[training]\nlearning_rate = 0\n", "field 'training.learning_rate' must be positive, got 0.0."),
    (lambda t: t + "[training]\nepochs = 3\n", "field 'training.epochs' is not a known field (known: batch_size, "
                                              "learning_rate, rank, sample_every, steps)."),
    (lambda t: t + "[components.unet]\nsubfolder = 'unet'\n",
     "field 'components.unet' is not a component of the qwen_image family."),
])
def test_error_names_file_and_field_when_preset_malformed(tmp_path, change, message):
    path = write(tmp_path, change(GOOD))
    with pytest.raises(PresetError) as error:
        read_preset(path)
    assert str(error.value) == f"{path}: {message} Fix the preset file or remove it."


def test_error_names_file_when_toml_is_invalid(tmp_path):
    path = write(tmp_path, "name = \n")
    with pytest.raises(PresetError, match=rf"^{path}: not valid TOML \("):
        read_preset(path)


def test_unknown_preset_suggests_close_names_or_lists_known(tmp_path):
    with pytest.raises(PresetError) as close:
        load_preset("qwen-image-2521")
    assert str(close.value).startswith("Unknown preset 'qwen-image-2521'. Did you mean qwen-image-2512")
    write(tmp_path, GOOD)
    with pytest.raises(PresetError) as far:
        load_preset("zzz", tmp_path)
    assert str(far.value) == "Unknown preset 'zzz'. Known presets: mine."


def test_model_folder_becomes_a_preset_from_its_model_index(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "QwenImagePipeline"}))
    preset = preset_for_folder(tmp_path)
    assert preset.family == Family.QWEN_IMAGE and preset.folder == tmp_path.resolve()
    assert [spec.subfolder for spec in preset.components] == ["transformer", "vae", "text_encoder", "tokenizer",
                                                              "scheduler"]


def test_error_raised_if_model_folder_has_no_index_or_an_unsupported_pipeline(tmp_path):
    with pytest.raises(PresetError, match="model_index.json is missing"):
        preset_for_folder(tmp_path)
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(PresetError) as error:
        preset_for_folder(tmp_path)
    assert str(error.value) == (f"{tmp_path / 'model_index.json'}: pipeline 'StableDiffusionPipeline' is not "
                                "supported. Supported: QwenImagePipeline.")


def test_presets_dir_points_at_the_repository_presets():
    assert PRESETS_DIR == Path(__file__).resolve().parents[2] / "presets"
