"""The models the studio offers: the presets folder plus the local folders a user registered.

Presets are read again on every call (a TOML file is cheap to parse), so a preset added to the folder, or
a download finishing, shows without a restart. A broken preset file does not hide the others: it is left
out and its error kept for the Models tab to show.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, replace
from pathlib import Path

from engine.errors import PresetError
from engine.presets import Preset, Tab, load_preset, preset_for_folder, preset_names
from engine.sources import component_status

logger = logging.getLogger(__name__)

FOLDERS_FILE = "studio-folders.json"  # in the models folder: the local folders registered in the Models tab


@dataclass(frozen=True)
class Availability:
    present: bool  # every file a load needs is on disk
    size_bytes: int
    missing: tuple[str, ...]  # what is missing, per component, for the user
    downloadable: bool  # some files come from a hub (else they ship in a folder, or sit in the user's)


class Catalog:
    def __init__(self, presets_dir: Path, models_dir: Path):
        self.presets_dir = Path(presets_dir)
        self.models_dir = Path(models_dir)
        self._lock = threading.Lock()

    def presets(self, tab: Tab | None = None) -> list[Preset]:
        """Every readable preset, then every registered folder; only those serving `tab` when given."""
        return [preset for preset in self._scan()[0] if tab is None or tab in preset.tabs]

    def problems(self) -> list[str]:
        """Why some preset files or registered folders are left out."""
        return self._scan()[1]

    def _scan(self) -> tuple[list[Preset], list[str]]:
        found, errors = [], []
        for name in preset_names(self.presets_dir):
            try:
                found.append(load_preset(name, self.presets_dir))
            except PresetError as error:
                errors.append(str(error))
        names = {preset.name for preset in found}
        for folder in self._folders():
            try:
                preset = preset_for_folder(folder)
            except PresetError as error:
                errors.append(str(error))
                continue
            if preset.name in names:  # a folder named like a preset must not shadow it
                preset = replace(preset, name=f"{preset.name} ({folder})")
            names.add(preset.name)
            found.append(preset)
        return found, errors

    def get(self, name: str) -> Preset:
        presets = self.presets()
        for preset in presets:
            if preset.name == name:
                return preset
        known = ", ".join(preset.name for preset in presets) or "none"
        raise PresetError(f"Unknown preset '{name}'.", f"Known presets: {known}.")

    def availability(self, preset: Preset) -> Availability:
        statuses = component_status(preset, self.models_dir)
        missing = tuple(f"{status.role.value}: {item}" for status in statuses for item in status.missing)
        return Availability(present=not missing, size_bytes=sum(status.size_bytes for status in statuses),
                            missing=missing, downloadable=any(spec.repo for spec in preset.components))

    def register_folder(self, folder: Path) -> Preset:
        """Remember a model folder (diffusers layout) so that it is offered like a preset, across restarts."""
        folder = Path(folder).expanduser().resolve()
        if not folder.is_dir():
            raise PresetError(f"{folder} is not a folder.", "Give the path of a model folder on this machine.")
        preset = preset_for_folder(folder)  # raises with a hint when it is not a model folder
        with self._lock:
            folders = self._folders()
            if folder not in folders:
                self._write_folders(folders + [folder])
        logger.info("Registered model folder %s as '%s'", folder, preset.name)
        return self.get(next(p.name for p in self.presets() if p.folder == folder))

    def _folders(self) -> list[Path]:
        path = self.models_dir / FOLDERS_FILE
        if not path.is_file():
            return []
        try:
            return [Path(item) for item in json.loads(path.read_text(encoding="utf-8"))]
        except (OSError, ValueError, TypeError) as error:
            logger.warning("Ignoring %s: %s", path, error)
            return []

    def _write_folders(self, folders: list[Path]) -> None:
        self.models_dir.mkdir(parents=True, exist_ok=True)
        path = self.models_dir / FOLDERS_FILE
        path.write_text(json.dumps([str(folder) for folder in folders], indent=1), encoding="utf-8")
