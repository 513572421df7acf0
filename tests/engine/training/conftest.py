"""A dataset of 32 shapes-world images at 64x64, encoded once per session by the tiny random model; a dataset
folder of 8 such images and run.toml files for whole runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.toyworld.dataset import write_dataset
from engine.training.caching import Encoders, build_cache
from engine.training.data import ShapesSamples


@pytest.fixture(scope="session")
def encoders(tiny_model) -> Encoders:
    modules = tiny_model.modules
    return Encoders(tokenizer=modules.tokenizer, text_encoder=modules.text_encoder, vae=modules.vae)


@pytest.fixture(scope="session")
def shapes_cache(encoders):
    return build_cache(encoders, ShapesSamples(32, size=64), key="shapes-32-64")


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    """8 shapes-world images at 64x64 with a metadata.csv."""
    folder = tmp_path_factory.mktemp("dataset")
    write_dataset(folder, count=8, size=64)
    return folder


def write_config(folder: Path, model: Path, dataset: Path, **train) -> Path:
    """A run.toml in folder (output in folder/out) with small defaults; train= overrides [train] keys."""
    values = dict(steps=4, batch_size=2, learning_rate=5e-3, rank=4, checkpoint_every=2, log_every=1,
                  sample_every=0, seed=0)
    values.update(train)
    lines = [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    text = "\n".join([f"[model]\nmodel = {json.dumps(str(model))}",
                      f"[dataset]\npath = {json.dumps(str(dataset))}\nresolution = 64",
                      "[train]", *lines, f"[output]\ndir = {json.dumps(str(folder / 'out'))}\nname = \"run\""])
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "run.toml"
    path.write_text(text + "\n")
    return path
