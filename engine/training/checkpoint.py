"""Training checkpoints: one folder per step, written atomically, safetensors only (no pickle).

A checkpoint holds everything a run needs to continue exactly where it stopped: the weights of each named
module (the model, its EMA copy), the optimizer's moment tensors and hyperparameters, the step, the torch
RNG state and whatever JSON-able state the caller adds. It is written to `step-NNNNNNN.tmp` and renamed
into place, so a run killed mid-write leaves either the previous checkpoint or the new one, never half of
one; resuming takes the newest complete folder.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from engine.errors import EngineError

logger = logging.getLogger(__name__)

_FOLDER = re.compile(r"^step-(\d{7,})$")
STATE_FILE = "state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
RNG_FILE = "rng.safetensors"


class CheckpointError(EngineError):
    """A checkpoint cannot be read or does not fit the run resuming from it."""


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint read back: the step, tensors per module, the optimizer's state_dict, the caller's state."""

    step: int
    modules: dict[str, dict[str, torch.Tensor]]
    optimizer: dict[str, Any] | None
    state: dict[str, Any]
    path: Path


def folder_for(root: Path, step: int) -> Path:
    return Path(root) / f"step-{step:07d}"


def checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under root as (step, folder), oldest first; unfinished .tmp folders are ignored."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(match.group(1)), path) for path in root.iterdir()
             if path.is_dir() and (match := _FOLDER.match(path.name)) and (path / STATE_FILE).is_file()]
    return sorted(found)


def latest(root: Path) -> Path | None:
    found = checkpoints(root)
    return found[-1][1] if found else None


def _flatten_optimizer(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """torch optimizer state_dict -> (tensors for safetensors, JSON for the rest)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entries in state_dict["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for index, entries in meta["scalars"].items():
        state.setdefault(int(index), {}).update(entries)
    return {"state": state, "param_groups": meta["param_groups"]}


def save(root: Path, step: int, modules: dict[str, dict[str, torch.Tensor]],
         optimizer: dict[str, Any] | None = None, state: dict[str, Any] | None = None, keep: int = 2) -> Path:
    """Write checkpoint `step` under root atomically; keep only the newest `keep` checkpoints."""
    root = Path(root)
    final = folder_for(root, step)
    temporary = final.with_name(final.name + ".tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    for name, tensors in modules.items():
        save_file({key: value.detach().cpu().contiguous() for key, value in tensors.items()},
                  str(temporary / f"{name}.safetensors"))
    meta: dict[str, Any] = {"step": step, "state": state or {}, "modules": sorted(modules)}
    if optimizer is not None:
        tensors, meta["optimizer"] = _flatten_optimizer(optimizer)
        save_file(tensors, str(temporary / OPTIMIZER_FILE))
    save_file({"torch": torch.get_rng_state()}, str(temporary / RNG_FILE))
    # state.json is written last: a folder without it is not a checkpoint (see checkpoints()).
    (temporary / STATE_FILE).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    if final.exists():
        shutil.rmtree(final)
    os.replace(temporary, final)
    for _, old in checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    logger.info("Saved checkpoint %s", final)
    return final


def load(path: Path, restore_rng: bool = True) -> Checkpoint:
    """Read a checkpoint folder; by default also put the torch RNG back as it was when it was saved."""
    path = Path(path)
    try:
        meta = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
        modules = {name: load_file(str(path / f"{name}.safetensors")) for name in meta["modules"]}
        optimizer = None
        if "optimizer" in meta:
            optimizer = _unflatten_optimizer(load_file(str(path / OPTIMIZER_FILE)), meta["optimizer"])
        if restore_rng:
            torch.set_rng_state(load_file(str(path / RNG_FILE))["torch"])
    except (OSError, KeyError, ValueError) as error:
        raise CheckpointError(f"Cannot read the checkpoint {path}: {error}.",
                              "Delete that folder to resume from the one before, or start afresh.") from None
    return Checkpoint(step=int(meta["step"]), modules=modules, optimizer=optimizer, state=meta["state"], path=path)
