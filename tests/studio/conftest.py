"""The studio under test: a presets folder holding a tiny random Qwen-Image, and the studio served from it.

The shipped tiny-shapes preset is not needed: the tests bring their own preset pointing at the session's tiny
repo (tests/conftest.py), plus qwen-image, whose 58 GB of files are never here, for jobs that must fail.
"""

from __future__ import annotations

import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.presets import PRESETS_DIR

TINY = "tiny-test"
TINY_PRESET = """
name = "{name}"
title = "Tiny test model"
family = "qwen_image"
tabs = ["text_to_image"]
folder = "{folder}"
notes = "A tiny random Qwen-Image: noise in milliseconds."
sizes = [[64, 64], [96, 64], [64, 96]]

[defaults]
width = 64
height = 64
steps = 4
cfg = 4.0

[limits]
min_side = 32
max_side = 256
"""


@pytest.fixture(scope="session")
def studio_presets(tiny_qwen_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("presets")
    (folder / f"{TINY}.toml").write_text(TINY_PRESET.format(name=TINY, folder=tiny_qwen_dir.as_posix()))
    shutil.copy(PRESETS_DIR / "qwen-image.toml", folder)
    return folder


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class RunningStudio:
    url: str
    services: object  # studio.services.Services
    outputs: Path

    def saved(self) -> set[Path]:
        return set(self.outputs.glob("*/*.png"))


@pytest.fixture(scope="session")
def studio(studio_presets, tmp_path_factory):
    """One studio for the API and browser tests, served in this process on a free port."""
    from studio.auth import Access
    from studio.config import StudioConfig
    from studio.services import Services
    from studio.shell import launch

    root = tmp_path_factory.mktemp("studio")
    config = StudioConfig(port=free_port(), models_dir=root / "models", outputs_dir=root / "outputs",
                          presets_dir=studio_presets, preset=TINY)
    services = Services.from_config(config)
    app = launch(services, Access(None), block=False)
    yield RunningStudio(url=f"http://127.0.0.1:{config.port}/", services=services, outputs=config.outputs_dir)
    app.close()


@pytest.fixture()
def slow_steps(monkeypatch):
    """Every denoising step of the in-process studio takes at least 0.3 s more, so a 100-step job lasts 30 s.

    The tiny test model steps in ~10 ms: a "slow" 100-step job would end in about a second, and on a busy machine
    before a page or client could click Cancel or queue behind it, turning those tests into races they sometimes
    lose. Cancel still has to stop the job within a step, as the tests check."""
    from engine.pipelines.run_control import RunControl

    report = RunControl.report

    def report_slowly(self, step: int, total: int) -> None:
        if step > 0:
            time.sleep(0.3)
        report(self, step, total)

    monkeypatch.setattr(RunControl, "report", report_slowly)
