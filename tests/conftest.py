"""Shared fixtures: tiny random Qwen-Image repos in the hub's exact layout, built once per test session."""

from __future__ import annotations

import os

# OpenMP threads that spin while they wait stall every parallel region when the cores are shared (a test run
# beside a training run: ~100x slower steps); sleeping threads do not. Set before torch loads its runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import shutil  # noqa: E402 (after the environment above)
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from engine.toyworld.tiny_qwen_image import build_tiny_qwen_image  # noqa: E402


@pytest.fixture(scope="session")
def tiny_qwen_dir(tmp_path_factory) -> Path:
    """A complete tiny Qwen-Image repo (model_index.json, sharded transformer and text encoder, ...)."""
    return build_tiny_qwen_image(tmp_path_factory.mktemp("tiny-qwen-image") / "Qwen-Image", seed=0)


@pytest.fixture(scope="session")
def tiny_model(tiny_qwen_dir):
    """The tiny repo loaded through the engine's front door, float32 on the CPU."""
    import engine

    return engine.load(tiny_qwen_dir, device="cpu")


@pytest.fixture()
def tiny_qwen_copy(tiny_qwen_dir, tmp_path) -> Path:
    """A private copy of the tiny repo that a test may damage."""
    return Path(shutil.copytree(tiny_qwen_dir, tmp_path / "Qwen-Image"))
