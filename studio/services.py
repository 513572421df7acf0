"""What the tabs' event handlers use: the configuration, the models on offer, the worker, the outputs folder,
the training runner."""

from __future__ import annotations

from dataclasses import dataclass

from studio.catalog import Catalog
from studio.config import StudioConfig
from studio.history import OutputStore
from studio.jobs import ModelCache, Worker
from studio.training_runs import TrainingRunner


@dataclass(frozen=True)
class Services:
    config: StudioConfig
    catalog: Catalog
    worker: Worker
    outputs: OutputStore
    training: TrainingRunner

    @classmethod
    def from_config(cls, config: StudioConfig) -> "Services":
        return cls(config=config, catalog=Catalog(config.presets_dir, config.models_dir),
                   worker=Worker(ModelCache(config.models_dir, config.device)), outputs=OutputStore(config.outputs_dir),
                   training=TrainingRunner(config))
