"""Shared pieces: size names, the seed rule, the progress line, and the form's settings."""

from __future__ import annotations

import pytest

from engine.errors import SettingsError
from engine.pipelines.run_control import Progress
from engine.presets import load_preset
from engine.sources import human_bytes
from studio.jobs import Stage, Update
from studio.tabs.text_to_image import form_settings
from studio.widgets import (
    RANDOM_SEED,
    pick_seed,
    progress_html,
    size_choices,
    size_label,
)


def test_qwen_image_sizes_are_named_by_their_aspect():
    assert [label for label, _ in size_choices(load_preset("qwen-image"))] == [
        "1328×1328 (1:1)", "1664×928 (16:9)", "928×1664 (9:16)", "1472×1140 (4:3)", "1140×1472 (3:4)"]
    assert size_choices(load_preset("qwen-image"))[1][1] == "1664x928"


def test_a_size_far_from_common_ratios_has_no_ratio_name():
    assert size_label(1000, 370) == "1000×370"


def test_seed_minus_one_draws_a_fresh_seed_and_others_are_kept():
    assert pick_seed(RANDOM_SEED, draw=lambda limit: 1234) == 1234
    assert pick_seed(None, draw=lambda limit: 99) == 99
    assert pick_seed(42.0) == 42


def test_progress_line_shows_step_and_time_left():
    text = progress_html(Update(Stage.DENOISING, Progress(step=3, total=8, elapsed_s=1.5)))
    assert "Step 3 of 8 · 2.5 s left" in text and 'aria-valuenow="38"' in text


def test_progress_line_says_what_happens_before_the_first_step():
    assert "Loading Qwen-Image" in progress_html(Update(Stage.LOADING), "Qwen-Image")
    assert "Waiting for the previous job" in progress_html(Update(Stage.WAITING))


def test_sizes_in_bytes_read_as_people_write_them():
    assert [human_bytes(n) for n in (512, 3_400_000, 57_800_000_000)] == ["512 B", "3.4 MB", "57.8 GB"]


def test_form_values_become_settings_with_strength_only_for_image_to_image():
    preset = load_preset("qwen-image")
    settings = form_settings(preset, "a cat", "", 1328.0, 928.0, 30.0, 4.0, 5.0, 2.0, 0.6, image_to_image=False)
    assert (settings.width, settings.height, settings.steps, settings.seed, settings.count) == (1328, 928, 30, 5, 2)
    assert settings.strength == 1.0 and settings.negative_prompt == " "
    assert form_settings(preset, "a cat", "", 1328, 928, 30, 4, 5, 1, 0.6, image_to_image=True).strength == 0.6


def test_error_raised_if_the_form_asks_a_size_beyond_the_model():
    with pytest.raises(SettingsError, match="width 4096 is above Qwen-Image's limit of 2048"):
        form_settings(load_preset("qwen-image"), "a cat", "", 4096, 928, 30, 4, 5, 1, 0.6, False)
