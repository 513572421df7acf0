"""Settings validation, size fitting, and the PNG "parameters" chunk."""

from __future__ import annotations

import pytest
from PIL import Image

from engine.errors import SettingsError
from engine.metadata import parameters_for, read_parameters, save_png
from engine.presets import Limits
from engine.settings import GenerateSettings, LoraChoice, fit_to_limits


def test_parameters_round_trip_through_png_without_temporary_files(tmp_path):
    settings = GenerateSettings(prompt="a red circle", negative_prompt="blur", width=64, height=48, steps=7,
                                cfg=3.5, seed=10, count=3)
    parameters = parameters_for(settings, "tiny-shapes", seed=12)
    path = save_png(Image.new("RGB", (64, 48)), tmp_path / "day" / "image.png", parameters)
    assert read_parameters(path) == {"prompt": "a red circle", "negative_prompt": "blur", "width": 64, "height": 48,
                                     "steps": 7, "cfg": 3.5, "seed": 12, "preset": "tiny-shapes", "loras": [],
                                     "engine_version": "0.1.0"}
    assert [p.name for p in path.parent.iterdir()] == ["image.png"]


def test_image_to_image_parameters_keep_strength_and_input(tmp_path):
    settings = GenerateSettings(prompt="x", strength=0.4)
    parameters = parameters_for(settings, "p", seed=0, input_image="in.png")
    assert parameters["strength"] == 0.4 and parameters["input_image"] == "in.png"


def test_png_without_parameters_reads_as_none(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    assert read_parameters(tmp_path / "plain.png") is None


@pytest.mark.parametrize(("value", "rounded"), [(72, 80), (71, 64), (8, 16), (2047, 2048), (2039, 2032), (1328, 1328)])
def test_sizes_round_to_nearest_multiple_within_limits(value, rounded):
    fitted, notes = fit_to_limits(GenerateSettings(prompt="x", width=value, height=64), Limits(min_side=8), "M")
    assert fitted.width == rounded
    assert notes == ([] if value == rounded else [f"width {value} was rounded to {rounded} (a multiple of 16)."])


@pytest.mark.parametrize(("fields", "message"), [
    (dict(prompt=""), "The prompt is empty. Describe the image you want."),
    (dict(count=0), "count must be a whole number from 1 to 16, got 0."),
    (dict(seed=-1), "seed must be a whole number from 0 to 9223372036854775807, got -1."),
    (dict(strength=0.0), "strength must be in (0, 1], got 0.0."),
    (dict(steps=2.5), "steps must be a whole number from 1 to 1000, got 2.5."),
])
def test_error_raised_if_settings_invalid(fields, message):
    values = dict(prompt="x") | fields
    with pytest.raises(SettingsError) as error:
        GenerateSettings(**values)
    assert str(error.value) == message


def test_error_raised_if_side_below_model_minimum():
    with pytest.raises(SettingsError) as error:
        fit_to_limits(GenerateSettings(prompt="x", width=128, height=64), Limits(min_side=256), "Qwen-Image")
    assert str(error.value) == "width 128 is below Qwen-Image's minimum of 256 pixels. Use at least 256."


def test_png_records_the_settings_loras_with_file_names_when_loras_are_chosen(tmp_path):
    chosen = [LoraChoice("/loras/star.safetensors", 0.8), LoraChoice("b.safetensors")]
    settings = GenerateSettings(prompt="x", loras=chosen)
    assert settings.loras == (LoraChoice("/loras/star.safetensors", 0.8), LoraChoice("b.safetensors", 1.0))
    path = save_png(Image.new("RGB", (8, 8)), tmp_path / "l.png", parameters_for(settings, "p", seed=0))
    recorded = read_parameters(path)["loras"]
    assert recorded == [{"name": "star.safetensors", "path": "/loras/star.safetensors", "weight": 0.8},
                        {"name": "b.safetensors", "path": "b.safetensors", "weight": 1.0}]
    assert GenerateSettings(prompt="x", loras=recorded).loras == settings.loras  # dropped back in, restored


@pytest.mark.parametrize(("lora", "message"), [
    (dict(path="a.safetensors", weight=4.5), "LoRA weight must be a number from -4 to 4, got 4.5 for a.safetensors. "
                                             "1 applies the LoRA as trained."),
    (dict(path="a.safetensors", weight=float("nan")), "LoRA weight must be a number from -4 to 4, got nan for "
                                                      "a.safetensors. 1 applies the LoRA as trained."),
    (dict(path=" "), "A LoRA was chosen without a file. Pick a .safetensors LoRA file."),
])
def test_error_raised_if_lora_choice_invalid(lora, message):
    with pytest.raises(SettingsError) as error:
        LoraChoice(**lora)
    assert str(error.value) == message


def test_error_raised_if_loras_are_not_paths_with_weights():
    with pytest.raises(SettingsError) as error:
        GenerateSettings(prompt="x", loras=[("a.safetensors", 1.0)])
    assert str(error.value) == "A LoRA must be given as a path and a weight, got ('a.safetensors', 1.0)."
