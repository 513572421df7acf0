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
