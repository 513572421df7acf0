"""Flow-matching schedules and the Euler step, as pure functions.

A rectified-flow model sees x_t = (1 - sigma) * x0 + sigma * noise and predicts the velocity noise - x0
(Lipman et al. 2022, https://arxiv.org/abs/2210.02747; Esser et al. 2024, https://arxiv.org/abs/2403.03206).
Sampling walks sigma from 1 towards 0 with Euler steps. The families differ only in how the evenly spaced
sigmas are bent towards the noisy end: a resolution-dependent shift with a terminal stretch (Qwen-Image) or
a constant shift (FLUX, Wan).

Every number here reproduces diffusers' FlowMatchEulerDiscreteScheduler bit for bit, including where it
rounds to float32, so a schedule built here drives a model exactly as the official pipeline does. diffusers
is the reference in the tests, never a dependency of this module.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.errors import MissingFilesError, SettingsError


class TimeShiftType(str, Enum):
    """How a resolution-dependent mu bends the sigmas (diffusers' time_shift_type)."""

    EXPONENTIAL = "exponential"
    LINEAR = "linear"


# diffusers options that change the schedule in ways we do not implement; refused when switched on so a
# config never silently samples differently from the model's own pipeline.
_UNSUPPORTED_OPTIONS = (
    "use_karras_sigmas",
    "use_exponential_sigmas",
    "use_beta_sigmas",
    "invert_sigmas",
    "stochastic_sampling",
)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class FlowMatchConfig:
    """The schedule settings of diffusers' FlowMatchEulerDiscreteScheduler that our pipelines use."""

    num_train_timesteps: int = 1000
    shift: float = 1.0  # static shift; ignored when use_dynamic_shifting is on, as in diffusers
    use_dynamic_shifting: bool = False
    base_image_seq_len: int = 256
    max_image_seq_len: int = 4096
    base_shift: float = 0.5
    max_shift: float = 1.15
    shift_terminal: float | None = None  # the last sigma before the final 0, or None for no stretch
    time_shift_type: TimeShiftType = TimeShiftType.EXPONENTIAL

    def __post_init__(self) -> None:
        for name in ("num_train_timesteps", "base_image_seq_len", "max_image_seq_len"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise SettingsError(f"FlowMatchConfig.{name} must be a positive integer, got {value!r}.")
        if self.max_image_seq_len <= self.base_image_seq_len:
            # calculate_shift divides by their difference.
            raise SettingsError(
                f"FlowMatchConfig.max_image_seq_len ({self.max_image_seq_len}) must be greater than "
                f"base_image_seq_len ({self.base_image_seq_len})."
            )
        if not _is_real(self.shift) or self.shift <= 0:
            raise SettingsError(f"FlowMatchConfig.shift must be a number > 0, got {self.shift!r}.")
        for name in ("base_shift", "max_shift"):
            value = getattr(self, name)
            if not _is_real(value):
                raise SettingsError(f"FlowMatchConfig.{name} must be a finite number, got {value!r}.")
        if not isinstance(self.use_dynamic_shifting, bool):
            raise SettingsError(
                f"FlowMatchConfig.use_dynamic_shifting must be true or false, got {self.use_dynamic_shifting!r}."
            )
        if self.shift_terminal is not None and not (_is_real(self.shift_terminal) and 0 < self.shift_terminal < 1):
            raise SettingsError(
                f"FlowMatchConfig.shift_terminal must be a number in (0, 1) or None, got {self.shift_terminal!r}."
            )
        try:
            # A config read from JSON carries the plain string; keep the enum so comparisons stay typed.
            object.__setattr__(self, "time_shift_type", TimeShiftType(self.time_shift_type))
        except ValueError:
            choices = ", ".join(repr(t.value) for t in TimeShiftType)
            raise SettingsError(
                f"FlowMatchConfig.time_shift_type must be one of {choices}, got {self.time_shift_type!r}."
            ) from None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FlowMatchConfig:
        """Read a diffusers scheduler_config.json dict; keys starting with "_" are metadata and ignored."""
        if not isinstance(data, dict):
            raise SettingsError(f"A scheduler config must be a JSON object, got {type(data).__name__}.")
        known = {f.name for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key.startswith("_"):
                continue
            if key in _UNSUPPORTED_OPTIONS:
                if value:
                    raise SettingsError(
                        f"Scheduler option {key}={json.dumps(value)} is not supported.",
                        f"Set {key} to false or remove it.",
                    )
                continue
            if key not in known:
                raise SettingsError(f"Unknown scheduler option {key!r}.", "Remove it from the scheduler config.")
            kwargs[key] = value
        return cls(**kwargs)

    @classmethod
    def from_file(cls, path: str | Path) -> FlowMatchConfig:
        """Read a diffusers scheduler_config.json file."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise MissingFilesError(f"Scheduler config {path} does not exist.") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise SettingsError(f"{path}: not valid JSON ({error}).") from None
        try:
            return cls.from_dict(data)
        except SettingsError as error:
            raise SettingsError(f"{path}: {error.message}", error.hint) from None


# Qwen/Qwen-Image scheduler/scheduler_config.json (also used by Qwen-Image-Edit and its 2509/2511 updates).
QWEN_IMAGE = FlowMatchConfig(
    shift=1.0,
    use_dynamic_shifting=True,
    base_image_seq_len=256,
    max_image_seq_len=8192,
    base_shift=0.5,
    max_shift=0.9,
    shift_terminal=0.02,
    time_shift_type=TimeShiftType.EXPONENTIAL,
)


def constant_shift(shift: float) -> FlowMatchConfig:
    """A static shift with no resolution dependence (FLUX 3.0, Wan 5.0)."""
    return FlowMatchConfig(shift=shift)


def dynamic_shift_mu(image_seq_len: int, config: FlowMatchConfig) -> float:
    """mu grows linearly with the token count, from base_shift at base_image_seq_len to max_shift at max_image_seq_len.

    Written in diffusers' calculate_shift order of operations so mu matches it to the last bit.
    """
    if not _is_int(image_seq_len) or image_seq_len < 1:
        raise SettingsError(f"image_seq_len must be a positive integer, got {image_seq_len!r}.")
    m = (config.max_shift - config.base_shift) / (config.max_image_seq_len - config.base_image_seq_len)
    b = config.base_shift - m * config.base_image_seq_len
    return float(image_seq_len * m + b)


@dataclass(frozen=True, eq=False)  # eq on tensors would be ambiguous; compare the fields explicitly
class Schedule:
    """The sigmas a run walks through and the timesteps the model is conditioned on."""

    sigmas: torch.Tensor  # float32, num_steps + 1 values, the last one 0.0
    timesteps: torch.Tensor  # float32, num_steps values, sigmas[:-1] * num_train_timesteps

    def __post_init__(self) -> None:
        for name in ("sigmas", "timesteps"):
            value = getattr(self, name)
            if not isinstance(value, torch.Tensor) or value.dtype != torch.float32 or value.ndim != 1:
                raise SettingsError(f"Schedule.{name} must be a 1-D float32 tensor.")
        if len(self.sigmas) != len(self.timesteps) + 1:
            raise SettingsError(
                f"Schedule.sigmas must have one value more than timesteps, got {len(self.sigmas)} "
                f"and {len(self.timesteps)}."
            )

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)


def flow_match_schedule(
    steps: int,
    config: FlowMatchConfig,
    image_seq_len: int | None = None,
    strength: float = 1.0,
) -> Schedule:
    """The schedule of a run of `steps` steps, cut to its last steps for image-to-image when strength < 1.

    image_seq_len (latent tokens, (H/16)*(W/16) for Qwen-Image) is required with dynamic shifting and
    unused otherwise. Follows diffusers' FlowMatchEulerDiscreteScheduler.set_timesteps as the Qwen-Image
    pipelines call it, with sigmas linspace(1, 1/steps, steps).
    """
    if not _is_int(steps) or steps < 1:
        raise SettingsError(f"steps must be a positive integer, got {steps!r}.")
    if not _is_real(strength) or not 0 < strength <= 1:
        raise SettingsError(f"strength must be a number in (0, 1], got {strength!r}.")

    # diffusers rounds the caller's float64 sigmas to float32 first and does all later maths in float32.
    sigmas = np.linspace(1.0, 1.0 / steps, steps).astype(np.float32)
    if config.use_dynamic_shifting:
        if image_seq_len is None:
            raise SettingsError(
                "image_seq_len is required when the scheduler uses dynamic shifting.",
                "Pass the number of latent image tokens.",
            )
        sigmas = _time_shift(config.time_shift_type, dynamic_shift_mu(image_seq_len, config), sigmas)
    else:
        shift = float(config.shift)  # a Python float keeps numpy's arithmetic in float32
        sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    if config.shift_terminal is not None:
        sigmas = _stretch_to_terminal(sigmas, float(config.shift_terminal), steps)

    sigmas_t = torch.from_numpy(sigmas).to(torch.float32)
    timesteps = sigmas_t * config.num_train_timesteps
    sigmas_t = torch.cat([sigmas_t, torch.zeros(1)])

    t_start = _first_step(steps, strength)
    return Schedule(sigmas=sigmas_t[t_start:].clone(), timesteps=timesteps[t_start:].clone())


def _time_shift(kind: TimeShiftType, mu: float, sigmas: np.ndarray) -> np.ndarray:
    # diffusers' time_shift with its exponent fixed at 1.0 (x ** 1.0 == x exactly).
    if kind is TimeShiftType.EXPONENTIAL:
        return math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1))
    return mu / (mu + (1 / sigmas - 1))


def _stretch_to_terminal(sigmas: np.ndarray, shift_terminal: float, steps: int) -> np.ndarray:
    """Scale 1 - sigma so the last sigma lands on shift_terminal while the first stays at 1 (from LTX-Video)."""
    one_minus_z = 1 - sigmas
    if one_minus_z[-1] == 0:
        # A schedule whose last sigma is 1 (always the case for one step) cannot be stretched: diffusers
        # divides 0 by 0 here and samples with a NaN sigma.
        raise SettingsError(
            f"steps={steps}: the shifted schedule ends at sigma 1.0, so it cannot end at "
            f"shift_terminal={shift_terminal}.",
            "Use more steps (at least 2).",
        )
    scale = one_minus_z[-1] / (1 - shift_terminal)
    return 1 - one_minus_z / scale


def _first_step(steps: int, strength: float) -> int:
    """Index of the first step an image-to-image run keeps (diffusers' get_timesteps, truncation included)."""
    init_steps = min(steps * strength, steps)
    t_start = int(max(steps - init_steps, 0))
    if t_start >= steps:
        raise SettingsError(
            f"strength {strength} x {steps} steps is too small: no denoising step would run.",
            f"Raise strength to at least {1 / steps:.4g} or raise steps.",
        )
    return t_start


def euler_step(
    sample: torch.Tensor,
    velocity: torch.Tensor,
    sigma: float | torch.Tensor,
    sigma_next: float | torch.Tensor,
) -> torch.Tensor:
    """One Euler step of the flow ODE from sigma to sigma_next; returned in the velocity's dtype.

    The sample is upcast to float32 (as diffusers does) so a bf16 model does not accumulate rounding
    over the run; sigmas become float32 tensors first so their difference rounds as diffusers' does.
    """
    sigma = torch.as_tensor(sigma, dtype=torch.float32, device=velocity.device)
    sigma_next = torch.as_tensor(sigma_next, dtype=torch.float32, device=velocity.device)
    prev = sample.to(torch.float32) + (sigma_next - sigma) * velocity
    return prev.to(velocity.dtype)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    """x_sigma = sigma * noise + (1 - sigma) * x0; sigma is one value or one per batch item.

    Computed in x0's dtype, as diffusers' scale_noise does.
    """
    sigma = torch.as_tensor(sigma, dtype=x0.dtype, device=x0.device).flatten()
    while sigma.ndim < x0.ndim:
        sigma = sigma.unsqueeze(-1)
    return sigma * noise + (1.0 - sigma) * x0


def training_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The velocity a flow-matching model learns to predict: d x_sigma / d sigma."""
    return noise - x0
