"""The Models tab: what is on disk, downloads with progress (the hub faked by a local copy), local folders."""

from __future__ import annotations

import fnmatch
import shutil
from pathlib import Path

import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from engine import sources
from studio.tabs.models import table_rows
from tests.studio.conftest import TINY

HUB_PRESET = """
name = "tiny-hub"
title = "Tiny from the hub"
family = "qwen_image"
tabs = ["text_to_image"]
sizes = [[64, 64]]

[hub]
modelscope = "test-org/Tiny-Qwen-Image"

[defaults]
width = 64
height = 64
steps = 2
cfg = 1.0

[limits]
min_side = 32
max_side = 256
"""


@pytest.fixture()
def hub_preset(studio_presets):
    path = studio_presets / "tiny-hub.toml"
    path.write_text(HUB_PRESET)
    yield "tiny-hub"
    path.unlink()


@pytest.fixture()
def fake_modelscope(monkeypatch, tiny_qwen_dir):
    """ModelScope serving the tiny repo: files matching the patterns are copied, reporting their bytes."""
    calls = []

    def fetch(request, tally):
        calls.append(request.repo_id)
        for path in sorted(tiny_qwen_dir.rglob("*")):
            relative = path.relative_to(tiny_qwen_dir).as_posix()
            if path.is_file() and any(fnmatch.fnmatch(relative, pattern) for pattern in request.patterns):
                tally.expect(path.stat().st_size)
                target = request.local_dir / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, target)
                tally.advance(path.stat().st_size, relative)

    monkeypatch.setitem(sources.FETCHERS, sources.Hub.MODELSCOPE, fetch)
    return calls


def test_table_lists_every_preset_with_its_files_and_size(studio):
    rows = {row[0]: row for row in table_rows(studio.services)}
    assert rows["qwen-image"][1:4] == ["Qwen-Image", "missing", "0 B"]
    assert rows[TINY][2] == "present" and rows[TINY][3].endswith("MB")


def test_download_fetches_the_missing_files_and_the_preset_then_generates(studio, hub_preset, fake_modelscope):
    client = Client(studio.url, verbose=False)
    status, details = client.predict(hub_preset, "modelscope", api_name="/download")
    assert status == "Tiny from the hub: all files present."
    assert "All files present" in details
    assert fake_modelscope == ["test-org/Tiny-Qwen-Image"]
    assert (studio.services.config.models_dir / "test-org/Tiny-Qwen-Image/transformer/config.json").is_file()
    result = client.predict(hub_preset, "a circle", " ", 64, 64, 2, 1.0, 1, 1, None, 0.6, api_name="/generate")
    assert "Done" in result[0]


def test_a_failed_download_says_what_to_do(studio, hub_preset, monkeypatch):
    def offline(request, tally):
        raise OSError("Network is unreachable")

    monkeypatch.setitem(sources.FETCHERS, sources.Hub.MODELSCOPE, offline)
    shutil.rmtree(studio.services.config.models_dir / "test-org", ignore_errors=True)
    with pytest.raises(AppError, match="Downloading test-org/Tiny-Qwen-Image from ModelScope failed .*Network is "
                                       "unreachable.* try the other hub"):
        Client(studio.url, verbose=False).predict(hub_preset, "modelscope", api_name="/download")


def test_a_registered_folder_joins_the_model_lists(studio, tiny_qwen_dir, tmp_path):
    folder = Path(shutil.copytree(tiny_qwen_dir, tmp_path / "My-Qwen"))
    client = Client(studio.url, verbose=False)
    status, models_value, t2i_value = client.predict(str(folder), api_name="/register_folder")
    assert status.startswith(f"Registered `{folder}` as **My-Qwen**")
    names = [name for _, name in t2i_value["choices"]]
    assert "My-Qwen" in names and TINY in names
    assert studio.services.catalog.get("My-Qwen").folder == folder.resolve()


def test_error_raised_if_the_registered_path_is_no_model_folder(studio, tmp_path):
    with pytest.raises(AppError, match="model_index.json is missing"):
        Client(studio.url, verbose=False).predict(str(tmp_path), api_name="/register_folder")
