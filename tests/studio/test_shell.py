"""The notice above the tabs: what to do when the default preset is absent or its files are not there."""

from __future__ import annotations

import shutil

from engine.presets import PRESETS_DIR
from studio.config import StudioConfig
from studio.services import Services
from studio.shell import notice
from studio.tabs.text_to_image import opening_preset
from tests.studio.conftest import TINY, TINY_PRESET


def services_for(presets_dir, tmp_path, preset="tiny-shapes") -> Services:
    return Services.from_config(StudioConfig(presets_dir=presets_dir, models_dir=tmp_path / "models",
                                             outputs_dir=tmp_path / "outputs", preset=preset))


def test_without_the_default_preset_the_studio_opens_on_one_that_works_and_says_what_is_there(studio_presets,
                                                                                                tmp_path):
    services = services_for(studio_presets, tmp_path)
    assert opening_preset(services).name == TINY  # its files are here, qwen-image's are not
    assert notice(services, opening_preset(services)) == (
        f"**The preset `tiny-shapes` is not installed** (looked in `{studio_presets}`). Available: **Qwen-Image** "
        f"(`qwen-image`), **Tiny test model** (`{TINY}`). Pick one in the Model list, or start with `--preset NAME`.")


def test_the_asked_preset_opens_and_the_notice_is_empty_when_it_is_ready(studio_presets, tmp_path):
    services = services_for(studio_presets, tmp_path, preset=TINY)
    assert opening_preset(services).name == TINY
    assert notice(services, opening_preset(services)) == ""


def test_a_hub_preset_without_files_points_to_the_download(studio_presets, tmp_path):
    services = services_for(studio_presets, tmp_path, preset="qwen-image")
    assert notice(services, opening_preset(services)) == (
        "**The files of Qwen-Image are not downloaded yet.** Download them in the Models tab, or run "
        "`python -m engine download --preset qwen-image`.")


def test_a_shipped_preset_without_its_folder_says_where_the_files_should_be(studio_presets, tmp_path):
    presets = shutil.copytree(studio_presets, tmp_path / "presets")
    (presets / f"{TINY}.toml").write_text(TINY_PRESET.format(name=TINY, folder="/nowhere/tiny"))
    services = services_for(presets, tmp_path, preset=TINY)
    assert "**The files of Tiny test model are missing from `/nowhere/tiny`**" in notice(services,
                                                                                       opening_preset(services))


def test_with_no_preset_at_all_the_notice_says_how_to_add_one(tmp_path):
    (tmp_path / "empty").mkdir()
    services = services_for(tmp_path / "empty", tmp_path)
    assert opening_preset(services) is None
    assert notice(services, None).startswith("**No model is available**")


def test_the_shipped_presets_folder_reads_without_problems(tmp_path):
    services = services_for(PRESETS_DIR, tmp_path)
    assert services.catalog.problems() == []
    assert "qwen-image" in [preset.name for preset in services.catalog.presets()]
