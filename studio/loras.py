"""The LoRA folder: what the generating tabs offer, and where a finished training run puts its LoRA."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from studio.config import StudioConfig

logger = logging.getLogger(__name__)

LORA_SUFFIX = ".safetensors"


def list_loras(config: StudioConfig) -> list[Path]:
    """Every LoRA file in the LoRA folder and its subfolders, by name; read on each call so new files show."""
    folder = Path(config.loras_dir)
    if not folder.is_dir():
        return []
    return sorted((path for path in folder.rglob(f"*{LORA_SUFFIX}") if path.is_file()),
                  key=lambda path: path.relative_to(folder).as_posix().lower())


def install_lora(source: Path, config: StudioConfig, name: str) -> Path:
    """Copy a trained LoRA into the LoRA folder as <name>.safetensors, replacing an older copy of the same run.

    The copy is written beside its target and renamed into place, so a picker never lists a half-written file.
    """
    folder = Path(config.loras_dir)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{name}{LORA_SUFFIX}"
    partial = folder / f".{name}{LORA_SUFFIX}.partial"
    shutil.copyfile(source, partial)
    os.replace(partial, target)
    logger.info("LoRA %s installed as %s", source, target)
    return target
