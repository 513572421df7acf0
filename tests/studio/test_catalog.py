"""The models on offer: presets read fresh, broken files left out with a reason, local folders remembered."""

from __future__ import annotations

import shutil

import pytest

from engine.errors import PresetError
from engine.presets import Tab
from studio.catalog import Catalog
from tests.studio.conftest import TINY


def test_presets_and_their_availability(studio_presets, tmp_path):
    catalog = Catalog(studio_presets, tmp_path / "models")
    assert [preset.name for preset in catalog.presets(Tab.TEXT_TO_IMAGE)] == ["qwen-image", TINY]
    assert catalog.availability(catalog.get(TINY)).present
    missing = catalog.availability(catalog.get("qwen-image"))
    assert not missing.present and any("transformer" in item for item in missing.missing)


def test_a_broken_preset_file_is_left_out_with_its_reason(studio_presets, tmp_path):
    folder = shutil.copytree(studio_presets, tmp_path / "presets")
    (folder / "broken.toml").write_text('name = "broken"\nfamily = "qwen_image"\n')
    catalog = Catalog(folder, tmp_path / "models")
    assert "broken" not in [preset.name for preset in catalog.presets()]
    assert any("broken.toml" in problem and "tabs" in problem for problem in catalog.problems())


def test_a_preset_added_while_running_shows_at_once(studio_presets, tmp_path):
    folder = shutil.copytree(studio_presets, tmp_path / "presets")
    catalog = Catalog(folder, tmp_path / "models")
    text = (folder / f"{TINY}.toml").read_text().replace(f'name = "{TINY}"', 'name = "later"')
    (folder / "later.toml").write_text(text)
    assert catalog.get("later").title == "Tiny test model"


def test_error_raised_if_a_preset_is_unknown_naming_the_known_ones(studio_presets, tmp_path):
    with pytest.raises(PresetError, match=f"Known presets: qwen-image, {TINY}"):
        Catalog(studio_presets, tmp_path).get("nope")


def test_a_registered_folder_is_offered_after_a_restart(studio_presets, tiny_qwen_dir, tmp_path):
    preset = Catalog(studio_presets, tmp_path / "models").register_folder(tiny_qwen_dir)
    assert preset.folder == tiny_qwen_dir.resolve()
    again = Catalog(studio_presets, tmp_path / "models")
    assert again.get(preset.name).folder == tiny_qwen_dir.resolve()
    assert again.availability(again.get(preset.name)).present


def test_registering_twice_keeps_one_entry(studio_presets, tiny_qwen_dir, tmp_path):
    catalog = Catalog(studio_presets, tmp_path / "models")
    catalog.register_folder(tiny_qwen_dir)
    catalog.register_folder(tiny_qwen_dir)
    registered = [p for p in catalog.presets() if p.source is None]  # presets/*.toml have a source file
    assert [p.folder for p in registered] == [tiny_qwen_dir.resolve()]


def test_error_raised_if_the_registered_folder_is_not_a_model_folder(studio_presets, tmp_path):
    with pytest.raises(PresetError, match="model_index.json is missing"):
        Catalog(studio_presets, tmp_path / "models").register_folder(tmp_path)
    with pytest.raises(PresetError, match="is not a folder"):
        Catalog(studio_presets, tmp_path / "models").register_folder(tmp_path / "absent")
