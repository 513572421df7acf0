"""The settings of a training run: one frozen dataclass, checked field by field when it is made."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any

from engine.errors import SettingsError


class TrainMode(str, Enum):
    """What a run trains: FULL every weight of the transformer, LORA low-rank adapters beside frozen weights."""

    FULL = "full"
    LORA = "lora"


class TimestepSampling(str, Enum):
    """How the noise level sigma of each example is drawn.

    SHIFTED_UNIFORM: a uniform index into the 1000-step schedule the model samples with, shift included
    (DiffSynth-Studio). LOGIT_NORMAL: sigmoid of a normal draw, which favours the middle of the path where
    the velocity is hardest to predict (Esser et al. 2024, https://arxiv.org/abs/2403.03206). QWEN_SHIFT: the
    logit-normal draw bent by the resolution-dependent shift the model samples with (Musubi Tuner's qwen_shift).
    """

    SHIFTED_UNIFORM = "shifted_uniform"
    LOGIT_NORMAL = "logit_normal"
    QWEN_SHIFT = "qwen_shift"


class TimestepWeighting(str, Enum):
    """How each example's loss is weighted by its noise level. BELL is DiffSynth-Studio's weight over the
    shifted schedule (highest mid-path, mean 1); it is defined on that schedule, so only for SHIFTED_UNIFORM."""

    NONE = "none"
    BELL = "bell"


# REFERENCE.md's Qwen-Image LoRA targets: attention projections of both streams, their modulations, MLP outputs.
QWEN_IMAGE_LORA_TARGETS = ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj", "to_out.0",
                           "to_add_out", "img_mlp.net.2", "img_mod.1", "txt_mlp.net.2", "txt_mod.1")


class LrSchedule(str, Enum):
    CONSTANT = "constant"  # after the warmup
    COSINE = "cosine"  # after the warmup, down to min_lr_ratio * learning_rate at the last step


@dataclass(frozen=True)
class TrainConfig:
    steps: int
    batch_size: int = 32
    learning_rate: float = 3e-4
    lr_schedule: LrSchedule = LrSchedule.CONSTANT
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    max_grad_norm: float = 1.0  # 0 turns clipping off
    timestep_sampling: TimestepSampling = TimestepSampling.LOGIT_NORMAL
    logit_mean: float = 0.0
    logit_std: float = 1.0
    caption_dropout: float = 0.0  # share of examples trained with the empty prompt, which CFG's negative uses
    ema_decay: float = 0.0  # 0 keeps no EMA copy of the weights
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 0
    mode: TrainMode = TrainMode.FULL
    mixed_precision: str = "no"  # accelerate's choices: no, fp16, bf16
    timestep_weighting: TimestepWeighting = TimestepWeighting.NONE
    gradient_accumulation: int = 1  # micro-batches of batch_size per optimizer step
    gradient_checkpointing: bool = False  # recompute block activations in the backward pass: less memory, ~30% slower
    lora_rank: int = 16  # TrainMode.LORA only, like the two below
    lora_alpha: float = 16.0  # the adapter's output is scaled by alpha / rank
    lora_targets: tuple[str, ...] = QWEN_IMAGE_LORA_TARGETS  # module-name suffixes that get an adapter

    def __post_init__(self) -> None:
        kinds = {"timestep_sampling": TimestepSampling, "lr_schedule": LrSchedule, "mode": TrainMode,
                 "timestep_weighting": TimestepWeighting}
        for name, kind in kinds.items():
            value = getattr(self, name)
            try:
                object.__setattr__(self, name, kind(value))
            except ValueError:
                choices = ", ".join(member.value for member in kind)
                raise SettingsError(f"TrainConfig.{name} must be one of {choices}, got {value!r}.") from None
        for name in ("steps", "batch_size", "checkpoint_every", "log_every", "keep_checkpoints",
                     "gradient_accumulation", "lora_rank"):
            _check_int(name, getattr(self, name), low=1)
        _check_int("warmup_steps", self.warmup_steps, low=0)
        _check_int("seed", self.seed, low=0)
        _check_number("learning_rate", self.learning_rate, low=0.0, low_open=True)
        _check_number("min_lr_ratio", self.min_lr_ratio, low=0.0, high=1.0)
        _check_number("weight_decay", self.weight_decay, low=0.0)
        for name in ("adam_beta1", "adam_beta2", "ema_decay"):
            _check_number(name, getattr(self, name), low=0.0, high=1.0, high_open=True)
        _check_number("max_grad_norm", self.max_grad_norm, low=0.0)
        _check_number("logit_mean", self.logit_mean)
        _check_number("logit_std", self.logit_std, low=0.0, low_open=True)
        _check_number("caption_dropout", self.caption_dropout, low=0.0, high=1.0, high_open=True)
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise SettingsError(f"TrainConfig.mixed_precision must be no, fp16 or bf16, got {self.mixed_precision!r}.")
        if not isinstance(self.gradient_checkpointing, bool):
            raise SettingsError(f"TrainConfig.gradient_checkpointing must be true or false, "
                                f"got {self.gradient_checkpointing!r}.")
        _check_number("lora_alpha", self.lora_alpha, low=0.0, low_open=True)
        targets = self.lora_targets
        if not isinstance(targets, (list, tuple)) or not targets or \
                not all(isinstance(name, str) and name.strip() for name in targets):
            raise SettingsError(f"TrainConfig.lora_targets must be a non-empty list of module names, got {targets!r}.")
        object.__setattr__(self, "lora_targets", tuple(targets))
        if self.mode is TrainMode.LORA and self.ema_decay > 0:
            raise SettingsError(f"TrainConfig.ema_decay must be 0 in lora mode, got {self.ema_decay}.",
                                "An EMA copy is kept of full training's weights only.")
        if self.timestep_weighting is TimestepWeighting.BELL and \
                self.timestep_sampling is not TimestepSampling.SHIFTED_UNIFORM:
            raise SettingsError(
                f"TrainConfig.timestep_weighting bell needs timestep_sampling shifted_uniform, got "
                f"{self.timestep_sampling.value}.", "The bell weight is defined over the shifted schedule's steps.")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, enums as their values, tuples as lists; written into every checkpoint."""
        def plain(value: Any) -> Any:
            if isinstance(value, Enum):
                return value.value
            return list(value) if isinstance(value, tuple) else value

        return {key: plain(value) for key, value in asdict(self).items()}


def _check_int(name: str, value: Any, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise SettingsError(f"TrainConfig.{name} must be a whole number of at least {low}, got {value!r}.")


def _check_number(name: str, value: Any, low: float | None = None, high: float | None = None,
                  low_open: bool = False, high_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        bounds = []
        if low is not None:
            bounds.append(f"{'>' if low_open else '>='} {low:g}")
        if high is not None:
            bounds.append(f"{'<' if high_open else '<='} {high:g}")
        where = f" ({' and '.join(bounds)})" if bounds else ""
        raise SettingsError(f"TrainConfig.{name} must be a finite number{where}, got {value!r}.")
