"""The outputs folder: date folders, names never reused, settings in every PNG, readable back after a restart."""

from __future__ import annotations

import threading
from datetime import datetime

import pytest
from PIL import Image

from engine.errors import SettingsError
from engine.metadata import parameters_for, save_png
from engine.settings import GenerateSettings
from studio.history import OutputStore, read_recipe

DAY_ONE = datetime(2026, 3, 1, 12, 0)
DAY_TWO = datetime(2026, 3, 2, 9, 30)


def picture(color: str = "red") -> Image.Image:
    return Image.new("RGB", (16, 16), color)


def params(seed: int = 7, **changes) -> dict:
    settings = GenerateSettings(prompt="a red circle", width=64, height=48, steps=3, cfg=2.5, seed=seed, **changes)
    return parameters_for(settings, "tiny-test", seed)


def test_images_go_to_a_date_folder_with_counter_and_seed_in_the_name(tmp_path):
    store = OutputStore(tmp_path, clock=lambda: DAY_ONE)
    first, second = store.save(picture(), params(7)), store.save(picture(), params(7))
    assert first == tmp_path / "2026-03-01" / "00001-7.png"
    assert second == tmp_path / "2026-03-01" / "00002-7.png"


def test_a_name_is_never_reused_when_a_new_store_opens_the_same_folder(tmp_path):
    OutputStore(tmp_path, clock=lambda: DAY_ONE).save(picture("red"), params(7))
    again = OutputStore(tmp_path, clock=lambda: DAY_ONE).save(picture("blue"), params(7))
    assert again.name == "00002-7.png"
    assert Image.open(tmp_path / "2026-03-01" / "00001-7.png").getpixel((0, 0)) == (255, 0, 0)


def test_a_file_put_there_by_someone_else_is_not_overwritten(tmp_path):
    store = OutputStore(tmp_path, clock=lambda: DAY_ONE)
    store.save(picture(), params(1))
    (tmp_path / "2026-03-01" / "00002-5.png").write_bytes(b"not ours")
    assert store.save(picture(), params(5)).name == "00003-5.png"
    assert (tmp_path / "2026-03-01" / "00002-5.png").read_bytes() == b"not ours"


def test_saves_from_many_threads_get_distinct_names(tmp_path):
    store = OutputStore(tmp_path, clock=lambda: DAY_ONE)
    paths = []
    threads = [threading.Thread(target=lambda: paths.append(store.save(picture(), params(3)))) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(paths)) == 12
    assert all(path.stat().st_size > 0 for path in paths)


def test_saved_png_carries_every_setting(tmp_path):
    path = OutputStore(tmp_path, clock=lambda: DAY_ONE).save(picture(), params(7, negative_prompt="blue"))
    recipe = read_recipe(path)
    assert recipe.preset == "tiny-test"
    assert recipe.settings == GenerateSettings(prompt="a red circle", negative_prompt="blue", width=64, height=48,
                                               steps=3, cfg=2.5, seed=7)


def test_recent_lists_newest_first_across_days_and_skips_unfinished_names(tmp_path):
    clock = {"now": DAY_ONE}
    store = OutputStore(tmp_path, clock=lambda: clock["now"])
    old = [store.save(picture(), params(seed)) for seed in (1, 2)]
    clock["now"] = DAY_TWO
    new = store.save(picture(), params(3))
    (tmp_path / "2026-03-02" / "00009-9.png").touch()  # a claimed name whose image was never written
    (tmp_path / "2026-03-02" / "notes.txt").write_text("not an image")
    assert store.recent() == [new, old[1], old[0]]
    assert store.recent(limit=2) == [new, old[1]]


def test_recent_is_empty_before_the_first_image(tmp_path):
    assert OutputStore(tmp_path / "none-yet").recent() == []


def test_recipe_of_an_image_to_image_result_names_its_input(tmp_path):
    settings = GenerateSettings(prompt="a square", width=64, height=64, steps=2, strength=0.4)
    path = save_png(picture(), tmp_path / "x.png", parameters_for(settings, "tiny-test", 0, input_image="in.png"))
    recipe = read_recipe(path)
    assert recipe.input_image == "in.png" and recipe.settings.strength == 0.4


def test_png_without_settings_has_no_recipe(tmp_path):
    picture().save(tmp_path / "plain.png")
    assert read_recipe(tmp_path / "plain.png") is None


def test_error_raised_if_the_settings_in_a_png_are_invalid(tmp_path):
    bad = params(7)
    bad["steps"] = 0
    path = save_png(picture(), tmp_path / "bad.png", bad)
    with pytest.raises(SettingsError, match="steps"):
        read_recipe(path)
