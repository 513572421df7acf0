"""Generation settings: one frozen dataclass that the CLI, the studio and the Python API all build.

Range checks that need no model happen in __post_init__; checks against a model's limits (size multiple,
largest side) happen in fit_to_limits, which also rounds sizes and says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from engine.errors import SettingsError
from engine.presets import Limits

MAX_STEPS = 1000
MAX_COUNT = 16
MAX_SEED = 2**63 - 1
MAX_CFG = 30.0
MAX_LORA_WEIGHT = 4.0  # past this a LoRA only burns the image; negative weights push away from what it learned


@dataclass(frozen=True)
class LoraChoice:
    """One LoRA file to apply at generation, and how strongly (1 = as trained, 0 = off)."""

    path: str
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.path, str) or not self.path.strip():
            raise SettingsError("A LoRA was chosen without a file.", "Pick a .safetensors LoRA file.")
        number = isinstance(self.weight, (int, float)) and not isinstance(self.weight, bool)
        if not number or not math.isfinite(self.weight) or not -MAX_LORA_WEIGHT <= self.weight <= MAX_LORA_WEIGHT:
            raise SettingsError(f"LoRA weight must be a number from {-MAX_LORA_WEIGHT:g} to {MAX_LORA_WEIGHT:g}, "
                                f"got {self.weight} for {self.path}.", "1 applies the LoRA as trained.")
        object.__setattr__(self, "weight", float(self.weight))


@dataclass(frozen=True)
class GenerateSettings:
    prompt: str
    negative_prompt: str = " "
    width: int = 1328
    height: int = 1328
    steps: int = 50
    cfg: float = 4.0  # true classifier-free guidance; 1 runs the prompt alone
    seed: int = 0
    count: int = 1  # images in one run, with seeds seed, seed+1, ...
    strength: float = 1.0  # image-to-image: how much of the input image is noised away (1 = all of it)
    loras: tuple[LoraChoice, ...] = ()  # applied in this order, each with its weight

    def __post_init__(self) -> None:
        # A list is kept as a tuple (settings stay immutable); the dicts a PNG's parameters hold are accepted.
        object.__setattr__(self, "loras", tuple(_lora_choice(lora) for lora in self.loras))
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise SettingsError("The prompt is empty.", "Describe the image you want.")
        for name in ("width", "height"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise SettingsError(f"{name} must be a positive number of pixels, got {value}.")
        _check_int("steps", self.steps, 1, MAX_STEPS)
        _check_int("count", self.count, 1, MAX_COUNT)
        _check_int("seed", self.seed, 0, MAX_SEED)
        if not 1.0 <= self.cfg <= MAX_CFG:
            raise SettingsError(f"cfg must be between 1 and {MAX_CFG:g}, got {self.cfg}.", "1 turns guidance off.")
        if not 0.0 < self.strength <= 1.0:
            raise SettingsError(f"strength must be in (0, 1], got {self.strength}.")

    @property
    def uses_guidance(self) -> bool:
        return self.cfg > 1.0

    def seeds(self) -> list[int]:
        return [self.seed + index for index in range(self.count)]


def _lora_choice(value: LoraChoice | dict) -> LoraChoice:
    if isinstance(value, LoraChoice):
        return value
    if isinstance(value, dict) and "path" in value and set(value) <= {"path", "weight", "name"}:
        return LoraChoice(path=value["path"], weight=value.get("weight", 1.0))
    raise SettingsError(f"A LoRA must be given as a path and a weight, got {value!r}.")


def _check_int(name: str, value: int, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise SettingsError(f"{name} must be a whole number from {low} to {high}, got {value}.")


def fit_to_limits(settings: GenerateSettings, limits: Limits, model_title: str) -> tuple[GenerateSettings, list[str]]:
    """Round the size to the model's multiple and refuse sizes outside its range; return notes for the user."""
    notes = []
    sides = {}
    for name in ("width", "height"):
        value = getattr(settings, name)
        if value > limits.max_side:
            raise SettingsError(f"{name} {value} is above {model_title}'s limit of {limits.max_side} pixels.",
                                f"Use at most {limits.max_side}.")
        if value < limits.min_side:
            raise SettingsError(f"{name} {value} is below {model_title}'s minimum of {limits.min_side} pixels.",
                                f"Use at least {limits.min_side}.")
        rounded = max(limits.multiple, (value + limits.multiple // 2) // limits.multiple * limits.multiple)
        rounded = min(rounded, limits.max_side - limits.max_side % limits.multiple)
        if rounded != value:
            notes.append(f"{name} {value} was rounded to {rounded} (a multiple of {limits.multiple}).")
        sides[name] = rounded
    return replace(settings, **sides), notes
