"""The "parameters" PNG text chunk: every saved image carries the settings that made it, as JSON.

Dropping such a PNG back into the studio (or reading it with read_parameters) restores those settings.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

import engine
from engine.settings import GenerateSettings

CHUNK = "parameters"


def lora_records(settings: GenerateSettings) -> list[dict[str, Any]]:
    """The settings' LoRAs as an image records them: file name (to find it again elsewhere), path, weight."""
    return [{"name": Path(lora.path).name, "path": lora.path, "weight": lora.weight} for lora in settings.loras]


def parameters_for(settings: GenerateSettings, preset: str, seed: int, loras: list[dict] | None = None,
                   input_image: str | None = None) -> dict[str, Any]:
    """The JSON stored with one image: its own seed, not the batch's first. `loras` defaults to the settings'."""
    data = asdict(settings)
    data.pop("count")
    data.update(seed=seed, preset=preset, loras=lora_records(settings) if loras is None else loras,
                engine_version=engine.__version__)
    if input_image is None:
        data.pop("strength")
    else:
        data["input_image"] = input_image
    return data


def save_png(image: Image.Image, path: Path, parameters: dict[str, Any]) -> Path:
    """Write atomically (temp file + rename) so a crash never leaves half a PNG under the final name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    info = PngImagePlugin.PngInfo()
    info.add_text(CHUNK, json.dumps(parameters, ensure_ascii=False, sort_keys=True))
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".png.part")
    try:
        with os.fdopen(handle, "wb") as stream:
            image.save(stream, format="PNG", pnginfo=info)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def read_parameters(source: Path | Image.Image) -> dict[str, Any] | None:
    """The settings stored in a PNG made by the studio, or None if it carries none."""
    image = Image.open(source) if not isinstance(source, Image.Image) else source
    text = getattr(image, "text", {}).get(CHUNK) if hasattr(image, "text") else image.info.get(CHUNK)
    if not text:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None
