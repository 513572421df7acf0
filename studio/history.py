"""The outputs folder: every image saved with its settings, in date folders, under names never reused.

Layout: <outputs>/<YYYY-MM-DD>/<NNNNN>-<seed>.png, NNNNN counting up within the day. A name is claimed by
creating the file exclusively before the image is written over it, so two jobs (or two studios sharing the
folder) never write the same name and nothing is overwritten. The folder is the history: listing it after a
restart shows the same results.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any

from PIL import Image

from engine.errors import SettingsError
from engine.metadata import read_parameters, save_png
from engine.settings import GenerateSettings

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^(\d{5,})-(\d+)\.png$")
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class OutputStore:
    def __init__(self, root: Path, clock: Callable[[], datetime] = datetime.now):
        self.root = Path(root)
        self._clock = clock
        self._lock = threading.Lock()
        self._next: dict[Path, int] = {}  # per day folder: the counter to try first

    def save(self, image: Image.Image, parameters: dict[str, Any]) -> Path:
        """Write the PNG with its "parameters" chunk under a fresh name; returns the path."""
        path = self._claim(self.root / self._clock().strftime("%Y-%m-%d"), int(parameters.get("seed", 0)))
        try:
            return save_png(image, path, parameters)
        except BaseException:
            path.unlink(missing_ok=True)
            raise

    def _claim(self, day: Path, seed: int) -> Path:
        day.mkdir(parents=True, exist_ok=True)
        with self._lock:
            counter = self._next.get(day) or _highest_counter(day) + 1
            while True:
                path = day / f"{counter:05d}-{seed}.png"
                try:
                    path.open("xb").close()  # exclusive: fails if any writer has this name already
                except FileExistsError:
                    counter += 1
                    continue
                self._next[day] = counter + 1
                return path

    def recent(self, limit: int = 100) -> list[Path]:
        """The newest images first, across day folders; claimed names whose image is not written are skipped."""
        if not self.root.is_dir():
            return []
        found: list[Path] = []
        for day in sorted((d for d in self.root.iterdir() if d.is_dir() and _DAY.match(d.name)), reverse=True):
            names = sorted((p for p in day.iterdir() if _NAME.match(p.name)), key=_counter, reverse=True)
            found += [path for path in names if path.stat().st_size > 0]
            if len(found) >= limit:
                break
        return found[:limit]


def _counter(path: Path) -> int:
    return int(_NAME.match(path.name).group(1))


def _highest_counter(day: Path) -> int:
    return max((_counter(path) for path in day.iterdir() if _NAME.match(path.name)), default=0)


@dataclass(frozen=True)
class Recipe:
    """What a saved PNG says about how it was made: the preset and the settings, ready to put back."""

    preset: str | None
    settings: GenerateSettings
    input_image: str | None = None  # image-to-image: the input's name as recorded (the file may be gone)


def read_recipe(source: Path | Image.Image) -> Recipe | None:
    """The recipe in a PNG made by the studio or the CLI; None when it carries none.

    Raises SettingsError when the chunk is there but its values are not valid settings.
    """
    parameters = read_parameters(source)
    if parameters is None:
        return None
    known = {field.name for field in fields(GenerateSettings)}
    values = {key: value for key, value in parameters.items() if key in known}
    try:
        settings = GenerateSettings(**values)
    except TypeError as error:  # a required field (the prompt) is absent
        raise SettingsError(f"The image's settings are incomplete ({error}).") from None
    preset = parameters.get("preset")
    input_image = parameters.get("input_image")
    return Recipe(preset=preset if isinstance(preset, str) else None, settings=settings,
                  input_image=input_image if isinstance(input_image, str) else None)
