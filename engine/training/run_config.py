"""run.toml: everything a training run needs, read and checked in one place.

    [model]    preset = "tiny-shapes"  (or model = "path/to/diffusers/folder"; models_dir = "models")
    [dataset]  path, resolution, repeats, cache, alpha_mask
    [train]    mode, steps, batch_size, learning_rate, rank, alpha, timestep_sampling, sample_prompts, ...
    [output]   dir, name (the LoRA is written to <dir>/<name>.safetensors)

Relative paths are relative to the current directory, as paths on a command line are. Every error names the
file, the section and the key, on one line. The training values themselves are checked by TrainConfig, whose
messages are translated to the run.toml names here.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, fields
from enum import Enum
from pathlib import Path
from typing import Any

from engine.errors import EngineError, SettingsError
from engine.toml_values import TypedTable
from engine.training.config import (QWEN_IMAGE_LORA_TARGETS, LrSchedule, TimestepSampling, TimestepWeighting,
                                    TrainConfig, TrainMode)


class RunConfigError(EngineError):
    """A run.toml is missing, is not TOML, or has an unknown or bad key."""


class Fp8Base(str, Enum):
    """Store the frozen base weights in fp8: AUTO where the GPU computes in fp8 (never on a CPU), ON, OFF."""

    AUTO = "auto"
    ON = "on"
    OFF = "off"


@dataclass(frozen=True)
class ModelChoice:
    preset: str | None  # a preset name, or None when `model` names a folder
    model: Path | None
    models_dir: Path

    @property
    def target(self) -> str | Path:
        return self.model if self.model is not None else self.preset


@dataclass(frozen=True)
class DatasetSettings:
    path: Path
    resolution: int | None  # None: the model's default width
    repeats: int = 1
    cache: bool = True  # False encodes every batch as it is drawn (slower; the benchmark's baseline)
    alpha_mask: bool = False  # weigh the loss by each image's transparency (kohya's alpha_mask): see data.py


@dataclass(frozen=True)
class SampleSettings:
    every: int  # 0: no samples
    prompts: tuple[str, ...]
    steps: int

    @property
    def enabled(self) -> bool:
        return self.every > 0 and bool(self.prompts)


@dataclass(frozen=True)
class RunConfig:
    source: Path
    model: ModelChoice
    dataset: DatasetSettings
    train: TrainConfig
    samples: SampleSettings
    trigger_word: str
    fp8_base: Fp8Base
    mixed_precision: str  # "auto": bf16 on a GPU, none on a CPU; else accelerate's no, fp16, bf16
    output_dir: Path
    name: str

    @property
    def lora_path(self) -> Path:
        return self.output_dir / f"{self.name}.safetensors"


# run.toml [train] key -> TrainConfig field, where the names differ.
_TRAIN_FIELDS = {"rank": "lora_rank", "alpha": "lora_alpha", "target_modules": "lora_targets"}
_TRAIN_KEYS = {"mode", "steps", "batch_size", "gradient_accumulation", "gradient_checkpointing", "learning_rate",
               "lr_schedule", "warmup_steps", "rank", "alpha", "target_modules", "timestep_sampling",
               "timestep_weighting", "caption_dropout", "max_grad_norm", "weight_decay", "checkpoint_every",
               "keep_checkpoints", "log_every", "seed", "sample_every", "sample_prompts", "sample_steps",
               "trigger_word", "fp8_base", "mixed_precision"}
_SECTIONS = {"model": {"preset", "model", "models_dir"},
             "dataset": {"path", "resolution", "repeats", "cache", "alpha_mask"},
             "train": _TRAIN_KEYS, "output": {"dir", "name"}}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class _Section(TypedTable):
    """Typed reads from one [section] of the file, every error naming file, section and key."""

    def __init__(self, path: Path, name: str, table: Any):
        if not isinstance(table, dict):
            raise RunConfigError(f"{path}: [{name}] must be a table (a [{name}] section), got {table!r}.")
        self.path, self.name, self.table = path, name, table
        for key in table:
            if key not in _SECTIONS[name]:
                raise self.fail(key, f"is not a known key (known: {', '.join(sorted(_SECTIONS[name]))})")

    def fail(self, key: str, problem: str, hint: str = "") -> RunConfigError:
        return RunConfigError(f"{self.path}: [{self.name}] {key} {problem}.", hint)

    def kind_words(self, kind: type) -> str:
        return _KIND_WORDS.get(kind, kind.__name__)

    def whole(self, key: str, default: Any = ..., low: int = 1) -> int:
        value = self.get(key, int, default)
        if value is not None and value < low:
            raise self.fail(key, f"must be at least {low}, got {value}")
        return value

    def text(self, key: str, default: Any = ...) -> str:
        return self.get(key, str, default)

    def strings(self, key: str, default: Any = ...) -> tuple[str, ...]:
        values = self.get(key, list, default)
        if not all(isinstance(value, str) and value.strip() for value in values):
            raise self.fail(key, f"must be a list of non-empty strings, got {values!r}")
        return tuple(values)

    def choice(self, key: str, kind: type[Enum], default: Any = ...) -> Any:
        value = self.table.get(key, default)
        if value is ...:
            raise self.fail(key, "is missing")
        try:
            return kind(value)
        except ValueError:
            raise self.fail(key, f"must be one of {', '.join(m.value for m in kind)}, got {value!r}") from None


_KIND_WORDS = {int: "a whole number", float: "a number", str: "a string", bool: "true or false", list: "a list"}


def read_run_config(path: Path) -> RunConfig:
    """Parse and check a run.toml; RunConfigError naming file, section and key on the first problem."""
    path = Path(path)
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunConfigError(f"The run config {path} does not exist.") from None
    except (OSError, UnicodeDecodeError) as error:
        raise RunConfigError(f"Cannot read the run config {path}: {error}.") from None
    except tomllib.TOMLDecodeError as error:
        raise RunConfigError(f"{path}: not valid TOML ({error}).") from None
    for name in table:
        if name not in _SECTIONS:
            raise RunConfigError(f"{path}: [{name}] is not a known section (known: {', '.join(_SECTIONS)}).")
    sections = {name: _Section(path, name, table.get(name, {})) for name in _SECTIONS}
    for name in ("dataset", "train", "output"):
        if name not in table:
            raise RunConfigError(f"{path}: the [{name}] section is missing.")
    train = sections["train"]
    return RunConfig(
        source=path,
        model=_read_model(sections["model"]),
        dataset=_read_dataset(sections["dataset"]),
        train=_read_train(train),
        samples=SampleSettings(every=train.whole("sample_every", 100, low=0),
                               prompts=train.strings("sample_prompts", []),
                               steps=train.whole("sample_steps", 20)),
        trigger_word=train.text("trigger_word", "").strip(),
        fp8_base=_read_fp8(train),
        mixed_precision=_read_precision(train),
        output_dir=Path(sections["output"].text("dir")),
        name=_read_name(sections["output"]),
    )


def _read_model(section: _Section) -> ModelChoice:
    from engine.presets import DEFAULT_PRESET

    preset, model = section.text("preset", None), section.text("model", None)
    if preset is not None and model is not None:
        raise section.fail("model", "and [model] preset are both given", "Give one: a preset name or a model folder.")
    return ModelChoice(preset=None if model is not None else (preset or DEFAULT_PRESET),
                       model=Path(model) if model is not None else None,
                       models_dir=Path(section.text("models_dir", "models")))


def _read_dataset(section: _Section) -> DatasetSettings:
    resolution = section.whole("resolution", None, low=16)
    if resolution is not None and resolution % 16:
        raise section.fail("resolution", f"must be a multiple of 16, got {resolution}")
    return DatasetSettings(path=Path(section.text("path")), resolution=resolution,
                           repeats=section.whole("repeats", 1), cache=section.get("cache", bool, True),
                           alpha_mask=section.get("alpha_mask", bool, False))


def _read_train(section: _Section) -> TrainConfig:
    sampling = section.choice("timestep_sampling", TimestepSampling, TimestepSampling.SHIFTED_UNIFORM.value)
    # DiffSynth-Studio weights its shifted-uniform draws with the bell; the other samplers shape the draw instead.
    weighting = TimestepWeighting.BELL if sampling is TimestepSampling.SHIFTED_UNIFORM else TimestepWeighting.NONE
    rank = section.whole("rank", 16)
    values = dict(
        mode=section.choice("mode", TrainMode, TrainMode.LORA.value),
        steps=section.whole("steps"),
        batch_size=section.whole("batch_size", 1),
        gradient_accumulation=section.whole("gradient_accumulation", 1),
        gradient_checkpointing=section.get("gradient_checkpointing", bool, False),
        learning_rate=section.get("learning_rate", float, 1e-4),
        lr_schedule=section.choice("lr_schedule", LrSchedule, LrSchedule.CONSTANT.value),
        warmup_steps=section.whole("warmup_steps", 0, low=0),
        lora_rank=rank,
        lora_alpha=section.get("alpha", float, float(rank)),
        lora_targets=section.strings("target_modules", list(QWEN_IMAGE_LORA_TARGETS)),
        timestep_sampling=sampling,
        timestep_weighting=section.choice("timestep_weighting", TimestepWeighting, weighting.value),
        caption_dropout=section.get("caption_dropout", float, 0.0),
        max_grad_norm=section.get("max_grad_norm", float, 1.0),
        weight_decay=section.get("weight_decay", float, 0.0),
        checkpoint_every=section.whole("checkpoint_every", 100),
        keep_checkpoints=section.whole("keep_checkpoints", 2),
        log_every=section.whole("log_every", 5),
        seed=section.whole("seed", 0, low=0),
    )
    try:
        return TrainConfig(**values)
    except SettingsError as error:
        raise _translated(error, section) from None


def _translated(error: SettingsError, section: _Section) -> RunConfigError:
    """TrainConfig's 'TrainConfig.<field> must ...' as '<file>: [train] <key> must ...'."""
    keys = {field: key for key, field in _TRAIN_FIELDS.items()}
    known = {field.name for field in fields(TrainConfig)}

    def rename(match: re.Match) -> str:
        field = match.group(1)
        return f"[train] {keys.get(field, field)}" if field in known else match.group(0)

    message = re.sub(r"TrainConfig\.(\w+)", rename, error.message)
    return RunConfigError(f"{section.path}: {message}", error.hint)


def _read_fp8(section: _Section) -> Fp8Base:
    value = section.table.get("fp8_base", Fp8Base.AUTO.value)
    if isinstance(value, bool):  # fp8_base = true / false reads naturally in TOML too
        return Fp8Base.ON if value else Fp8Base.OFF
    return section.choice("fp8_base", Fp8Base, Fp8Base.AUTO.value)


def _read_precision(section: _Section) -> str:
    value = section.text("mixed_precision", "auto")
    if value not in ("auto", "no", "fp16", "bf16"):
        raise section.fail("mixed_precision", f"must be one of auto, no, fp16, bf16, got {value!r}")
    return value


def _read_name(section: _Section) -> str:
    default = Path(section.text("dir")).name or "lora"
    name = section.text("name", default)
    if not _NAME.match(name):
        raise section.fail("name", f"must be a plain file name (letters, digits, . _ -), got {name!r}")
    return name
