"""A dataset of 32 shapes-world images at 64x64, encoded once per session by the tiny random model."""

from __future__ import annotations

import pytest

from engine.training.caching import Encoders, build_cache
from engine.training.data import ShapesSamples


@pytest.fixture(scope="session")
def encoders(tiny_model) -> Encoders:
    modules = tiny_model.modules
    return Encoders(tokenizer=modules.tokenizer, text_encoder=modules.text_encoder, vae=modules.vae)


@pytest.fixture(scope="session")
def shapes_cache(encoders):
    return build_cache(encoders, ShapesSamples(32, size=64), key="shapes-32-64")
