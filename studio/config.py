"""What `python app.py` was asked for, as one frozen dataclass the rest of the studio reads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.presets import DEFAULT_PRESET, PRESETS_DIR

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860


@dataclass(frozen=True)
class StudioConfig:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    share: bool = False
    credentials: tuple[str, str] | None = None  # (user, password) asked of every visitor, local ones too
    models_dir: Path = Path("models")
    outputs_dir: Path = Path("outputs")
    presets_dir: Path = PRESETS_DIR
    preset: str = DEFAULT_PRESET  # what the tabs open on
    device: str | None = None  # None: the engine picks (cuda when present)
    loras_dir: Path | None = None  # LoRA files the generating tabs offer; None: <models_dir>/loras
    training_dir: Path | None = None  # training runs and uploaded datasets; None: <outputs_dir>/training

    def __post_init__(self) -> None:
        # Derived here, once, so every reader agrees on where the folders are.
        if self.loras_dir is None:
            object.__setattr__(self, "loras_dir", Path(self.models_dir) / "loras")
        if self.training_dir is None:
            object.__setattr__(self, "training_dir", Path(self.outputs_dir) / "training")
