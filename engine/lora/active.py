"""The LoRAs on one model, kept in step with each run's settings: files not applied yet are read, weights set,
LoRAs no longer asked for removed, so a run depends only on its own settings (same settings + seed = same
image, whatever ran before) and switching never reloads the base model.

A file is known by its resolved path and its modification time and size: a LoRA rewritten in place (a
training run saving a newer checkpoint under the same name) is read again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path

import torch

from engine.errors import LoraError
from engine.lora.files import read_lora_tensors
from engine.lora.normalize import LoraDelta, linear_layers, normalize
from engine.lora.stack import LoraStack
from engine.settings import LoraChoice

logger = logging.getLogger(__name__)


class ActiveLoras:
    """One model's LoRA stack. Hold `lock` for a whole run: the LoRAs set for it must stay until it ends."""

    def __init__(self, architecture: str):
        self.architecture = architecture  # named in errors: "... looks like a LoRA for FLUX.1, not Qwen-Image."
        self.lock = threading.RLock()
        self._stack: LoraStack | None = None
        self._stamps: dict[str, tuple[int, int]] = {}  # applied key -> (mtime_ns, size) of the file read

    @property
    def stack(self) -> LoraStack | None:
        return self._stack

    def use(self, network: torch.nn.Module, choices: Sequence[LoraChoice]) -> None:
        """Make exactly `choices` act on `network`, in their order and with their weights. Every new file is
        read and checked before anything changes, so a bad file leaves the previous state in place."""
        with self.lock:
            if self._stack is None:
                if not choices:
                    return
                self._stack = LoraStack(network)
            stack = self._stack
            stack.attach(network)
            wanted = self._keys(choices)
            fresh: dict[str, dict[str, LoraDelta]] = {}
            stamps = {}
            layers = None
            for key, choice in zip(wanted, choices):
                stamp = _stamp(Path(key), choice.path)
                if key in stack.keys and self._stamps.get(key) == stamp:
                    continue
                layers = layers if layers is not None else linear_layers(network)
                tensors, _ = read_lora_tensors(Path(key))
                fresh[key] = normalize(tensors, layers, name=Path(choice.path).name, architecture=self.architecture)
                stamps[key] = stamp
            for key in stack.keys:
                if key not in wanted or key in fresh:
                    stack.remove(key)
                    self._stamps.pop(key, None)
            for key, choice in zip(wanted, choices):
                if key in fresh:
                    stack.add(key, fresh[key], choice.weight)
                    self._stamps[key] = stamps[key]
                    logger.info("LoRA %s applied at weight %g to %d layers", choice.path, choice.weight,
                                len(fresh[key]))
                elif stack.weight(key) != choice.weight:
                    stack.set_weight(key, choice.weight)
            if stack.keys != wanted:
                stack.reorder(wanted)

    def clear(self) -> None:
        with self.lock:
            if self._stack is not None:
                self._stack.clear()
            self._stamps.clear()

    @staticmethod
    def _keys(choices: Sequence[LoraChoice]) -> list[str]:
        keys = []
        for choice in choices:
            key = str(Path(choice.path).expanduser().resolve())
            if key in keys:
                raise LoraError(f"The LoRA {choice.path} is chosen twice.", "Choose it once, with one weight.")
            keys.append(key)
        return keys


def _stamp(path: Path, shown: str) -> tuple[int, int]:
    try:
        status = path.stat()
    except OSError:
        raise LoraError(f"The LoRA file {shown} does not exist.", "Check the path, or pick the LoRA again.") from None
    return status.st_mtime_ns, status.st_size
