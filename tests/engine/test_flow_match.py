"""Flow-matching schedules against diffusers' FlowMatchEulerDiscreteScheduler, plus their invariants."""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.qwenimage.pipeline_qwenimage import calculate_shift
from diffusers.pipelines.qwenimage.pipeline_qwenimage_img2img import QwenImageImg2ImgPipeline

import engine.schedulers.flow_match as flow_match_module
from engine.errors import MissingFilesError, SettingsError
from engine.schedulers.flow_match import (
    QWEN_IMAGE,
    FlowMatchConfig,
    Schedule,
    TimeShiftType,
    add_noise,
    constant_shift,
    dynamic_shift_mu,
    euler_step,
    flow_match_schedule,
    training_target,
)
from engine.toyworld.tiny_qwen_image import QWEN_IMAGE_SCHEDULER_CONFIG

# Qwen/Qwen-Image scheduler/scheduler_config.json, verbatim, as the tiny repos write it.
QWEN_IMAGE_SCHEDULER_JSON = QWEN_IMAGE_SCHEDULER_CONFIG

SEQ_LEN_1024 = (1024 // 16) * (1024 // 16)  # 4096
SEQ_LEN_1328 = (1328 // 16) * (1328 // 16)  # 6889


def reference_scheduler(config: dict, steps: int, image_seq_len: int | None = None) -> FlowMatchEulerDiscreteScheduler:
    """diffusers' scheduler set up the way the Qwen-Image / FLUX pipelines set it up."""
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(config)
    mu = None
    if scheduler.config.use_dynamic_shifting:
        mu = calculate_shift(
            image_seq_len,
            scheduler.config.base_image_seq_len,
            scheduler.config.max_image_seq_len,
            scheduler.config.base_shift,
            scheduler.config.max_shift,
        )
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    return scheduler


def assert_same_schedule(ours: Schedule, sigmas: torch.Tensor, timesteps: torch.Tensor) -> None:
    # Bitwise: the pipelines must condition the model on exactly diffusers' timesteps.
    assert ours.sigmas.dtype == torch.float32 and ours.timesteps.dtype == torch.float32
    torch.testing.assert_close(ours.sigmas, sigmas, rtol=0, atol=0)
    torch.testing.assert_close(ours.timesteps, timesteps, rtol=0, atol=0)


# --- parity with diffusers -------------------------------------------------------------------------------


@pytest.mark.parametrize("image_seq_len", [64, SEQ_LEN_1024, SEQ_LEN_1328, 8192])
@pytest.mark.parametrize("steps", [2, 20, 50])
def test_schedule_equals_diffusers_when_configured_as_qwen_image(steps, image_seq_len):
    reference = reference_scheduler(QWEN_IMAGE_SCHEDULER_JSON, steps, image_seq_len)
    ours = flow_match_schedule(steps, QWEN_IMAGE, image_seq_len=image_seq_len)
    assert_same_schedule(ours, reference.sigmas, reference.timesteps)


@pytest.mark.parametrize("shift", [3.0, 5.0])
@pytest.mark.parametrize("steps", [1, 2, 20, 50])
def test_schedule_equals_diffusers_when_shift_is_constant(steps, shift):
    reference = reference_scheduler({"shift": shift, "use_dynamic_shifting": False}, steps)
    ours = flow_match_schedule(steps, constant_shift(shift))
    assert_same_schedule(ours, reference.sigmas, reference.timesteps)


@pytest.mark.parametrize("steps", [1, 20])
def test_schedule_equals_diffusers_when_dynamic_shift_has_no_terminal(steps):
    # Qwen-Image Lightning: dynamic shifting without the terminal stretch.
    config = dict(QWEN_IMAGE_SCHEDULER_JSON, shift_terminal=None)
    reference = reference_scheduler(config, steps, SEQ_LEN_1024)
    ours = flow_match_schedule(steps, FlowMatchConfig.from_dict(config), image_seq_len=SEQ_LEN_1024)
    assert_same_schedule(ours, reference.sigmas, reference.timesteps)


def test_schedule_equals_diffusers_when_time_shift_is_linear():
    config = dict(QWEN_IMAGE_SCHEDULER_JSON, time_shift_type="linear")
    reference = reference_scheduler(config, 20, SEQ_LEN_1328)
    ours = flow_match_schedule(20, FlowMatchConfig.from_dict(config), image_seq_len=SEQ_LEN_1328)
    assert_same_schedule(ours, reference.sigmas, reference.timesteps)


@pytest.mark.parametrize("image_seq_len", [64, SEQ_LEN_1328, 8192])
def test_mu_equals_diffusers_calculate_shift_when_config_is_qwen_image(image_seq_len):
    expected = calculate_shift(image_seq_len, 256, 8192, 0.5, 0.9)
    assert dynamic_shift_mu(image_seq_len, QWEN_IMAGE) == expected


@pytest.mark.parametrize("strength", [0.6, 0.3, 0.01])
def test_schedule_equals_diffusers_img2img_when_strength_is_below_one(strength):
    steps = 20
    reference = reference_scheduler(QWEN_IMAGE_SCHEDULER_JSON, steps, SEQ_LEN_1024)
    # diffusers' own get_timesteps, run against the scheduler alone.
    timesteps, steps_run = QwenImageImg2ImgPipeline.get_timesteps(
        SimpleNamespace(scheduler=reference), steps, strength, "cpu"
    )
    sigmas = reference.sigmas[reference.begin_index :]
    ours = flow_match_schedule(steps, QWEN_IMAGE, image_seq_len=SEQ_LEN_1024, strength=strength)
    assert ours.num_steps == steps_run
    assert_same_schedule(ours, sigmas, timesteps)


@pytest.mark.parametrize("velocity_dtype", [torch.float32, torch.bfloat16])
def test_euler_step_equals_diffusers_step_when_run_over_a_schedule(velocity_dtype):
    steps = 8
    reference = reference_scheduler(QWEN_IMAGE_SCHEDULER_JSON, steps, SEQ_LEN_1024)
    schedule = flow_match_schedule(steps, QWEN_IMAGE, image_seq_len=SEQ_LEN_1024)
    generator = torch.Generator().manual_seed(0)
    ours = theirs = torch.randn(1, 16, 8, 8, generator=generator).to(velocity_dtype)
    for i, t in enumerate(reference.timesteps):
        velocity = torch.randn(1, 16, 8, 8, generator=generator).to(velocity_dtype)
        theirs = reference.step(velocity, t, theirs).prev_sample
        ours = euler_step(ours, velocity, schedule.sigmas[i], schedule.sigmas[i + 1])
        assert ours.dtype == velocity_dtype
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_euler_step_accepts_python_floats_when_sigmas_come_from_item():
    schedule = flow_match_schedule(4, constant_shift(3.0))
    sample, velocity = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)
    from_tensors = euler_step(sample, velocity, schedule.sigmas[1], schedule.sigmas[2])
    from_floats = euler_step(sample, velocity, schedule.sigmas[1].item(), schedule.sigmas[2].item())
    torch.testing.assert_close(from_floats, from_tensors, rtol=0, atol=0)


def test_add_noise_equals_diffusers_scale_noise_when_sigma_is_per_batch_item():
    reference = reference_scheduler(QWEN_IMAGE_SCHEDULER_JSON, 20, SEQ_LEN_1024)
    schedule = flow_match_schedule(20, QWEN_IMAGE, image_seq_len=SEQ_LEN_1024)
    generator = torch.Generator().manual_seed(1)
    x0 = torch.randn(3, 16, 4, 4, generator=generator)
    noise = torch.randn(3, 16, 4, 4, generator=generator)
    picks = torch.tensor([0, 7, 19])
    expected = reference.scale_noise(x0, reference.timesteps[picks], noise)
    torch.testing.assert_close(add_noise(x0, noise, schedule.sigmas[picks]), expected, rtol=0, atol=0)
    expected_one = reference.scale_noise(x0, reference.timesteps[5:6], noise)
    torch.testing.assert_close(add_noise(x0, noise, schedule.sigmas[5]), expected_one, rtol=0, atol=0)


def test_training_target_is_the_velocity_of_add_noise():
    x0, noise = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    velocity = (add_noise(x0, noise, 0.7) - add_noise(x0, noise, 0.2)) / 0.5
    torch.testing.assert_close(training_target(x0, noise), velocity)
    torch.testing.assert_close(training_target(x0, noise), noise - x0, rtol=0, atol=0)


# --- invariants ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "image_seq_len"),
    [(QWEN_IMAGE, 64), (QWEN_IMAGE, SEQ_LEN_1328), (constant_shift(3.0), None), (constant_shift(5.0), None)],
)
def test_schedule_runs_from_one_down_to_zero_when_strength_is_full(config, image_seq_len):
    schedule = flow_match_schedule(30, config, image_seq_len=image_seq_len)
    assert schedule.num_steps == 30
    assert len(schedule.sigmas) == 31
    assert schedule.sigmas[0].item() == 1.0
    assert schedule.sigmas[-1].item() == 0.0
    assert bool(torch.all(schedule.sigmas[1:] < schedule.sigmas[:-1]))
    torch.testing.assert_close(schedule.timesteps, schedule.sigmas[:-1] * 1000, rtol=0, atol=0)


@pytest.mark.parametrize("steps", [2, 20, 50])
def test_last_sigma_equals_shift_terminal_when_set(steps):
    schedule = flow_match_schedule(steps, QWEN_IMAGE, image_seq_len=SEQ_LEN_1024)
    assert schedule.sigmas[-2].item() == pytest.approx(0.02, abs=1e-6)


@pytest.mark.parametrize(("image_seq_len", "mu"), [(SEQ_LEN_1024, 0.69), (SEQ_LEN_1328, 0.83)])
def test_mu_matches_reference_when_image_is_1024_or_1328_square(image_seq_len, mu):
    assert round(dynamic_shift_mu(image_seq_len, QWEN_IMAGE), 2) == mu


def test_mu_spans_base_to_max_shift_when_length_spans_base_to_max():
    assert dynamic_shift_mu(256, QWEN_IMAGE) == pytest.approx(0.5)
    assert dynamic_shift_mu(8192, QWEN_IMAGE) == pytest.approx(0.9)


def test_schedule_is_plain_linspace_when_constant_shift_is_one():
    schedule = flow_match_schedule(10, constant_shift(1.0))
    expected = torch.from_numpy(np.linspace(1.0, 0.1, 10).astype(np.float32))
    torch.testing.assert_close(schedule.sigmas[:-1], expected, rtol=0, atol=0)


def test_schedule_is_full_when_strength_is_one():
    full = flow_match_schedule(20, QWEN_IMAGE, image_seq_len=SEQ_LEN_1024)
    at_one = flow_match_schedule(20, QWEN_IMAGE, image_seq_len=SEQ_LEN_1024, strength=1.0)
    assert at_one.num_steps == 20
    assert_same_schedule(at_one, full.sigmas, full.timesteps)


def test_schedule_keeps_the_tail_when_strength_is_below_one():
    full = flow_match_schedule(20, QWEN_IMAGE, image_seq_len=SEQ_LEN_1024)
    partial = flow_match_schedule(20, QWEN_IMAGE, image_seq_len=SEQ_LEN_1024, strength=0.6)
    assert partial.num_steps == 12
    assert_same_schedule(partial, full.sigmas[8:], full.timesteps[8:])


def test_image_seq_len_is_ignored_when_shift_is_constant():
    with_len = flow_match_schedule(10, constant_shift(3.0), image_seq_len=SEQ_LEN_1024)
    without = flow_match_schedule(10, constant_shift(3.0))
    assert_same_schedule(with_len, without.sigmas, without.timesteps)


def test_module_does_not_import_diffusers():
    tree = ast.parse(Path(flow_match_module.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not any(name.split(".")[0] == "diffusers" for name in imported)


# --- errors ----------------------------------------------------------------------------------------------


def test_error_raised_if_strength_times_steps_leaves_no_step():
    # diffusers truncates int(steps - steps*strength), so one step survives any strength that moves steps
    # off its own value; only a strength below float resolution leaves none.
    with pytest.raises(SettingsError) as caught:
        flow_match_schedule(20, QWEN_IMAGE, image_seq_len=SEQ_LEN_1024, strength=1e-17)
    assert str(caught.value) == (
        "strength 1e-17 x 20 steps is too small: no denoising step would run. "
        "Raise strength to at least 0.05 or raise steps."
    )


@pytest.mark.parametrize("strength", [0.0, -0.5, 1.5, math.nan])
def test_error_raised_if_strength_is_outside_zero_to_one(strength):
    with pytest.raises(SettingsError, match="strength"):
        flow_match_schedule(20, constant_shift(3.0), strength=strength)


@pytest.mark.parametrize("steps", [0, -3, 2.5, True])
def test_error_raised_if_steps_is_not_a_positive_integer(steps):
    with pytest.raises(SettingsError, match="steps"):
        flow_match_schedule(steps, constant_shift(3.0))


def test_error_raised_if_image_seq_len_missing_when_shifting_dynamically():
    with pytest.raises(SettingsError, match="image_seq_len"):
        flow_match_schedule(20, QWEN_IMAGE)


def test_error_raised_if_single_step_must_end_at_shift_terminal():
    # diffusers divides 0 by 0 here and returns a NaN sigma; we refuse instead.
    with np.errstate(invalid="ignore"):
        reference = reference_scheduler(QWEN_IMAGE_SCHEDULER_JSON, 1, SEQ_LEN_1024)
    assert math.isnan(reference.sigmas[0].item())
    with pytest.raises(SettingsError, match=r"steps=1.*shift_terminal=0\.02"):
        flow_match_schedule(1, QWEN_IMAGE, image_seq_len=SEQ_LEN_1024)


# --- config ----------------------------------------------------------------------------------------------


def test_from_dict_equals_qwen_image_preset_when_given_the_repo_config():
    config = FlowMatchConfig.from_dict(QWEN_IMAGE_SCHEDULER_JSON)
    assert config == QWEN_IMAGE
    assert config.time_shift_type is TimeShiftType.EXPONENTIAL


def test_from_file_reads_the_repo_config(tmp_path):
    path = tmp_path / "scheduler_config.json"
    path.write_text(json.dumps(QWEN_IMAGE_SCHEDULER_JSON))
    assert FlowMatchConfig.from_file(path) == QWEN_IMAGE


@pytest.mark.parametrize(
    "option", ["use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "invert_sigmas", "stochastic_sampling"]
)
def test_error_raised_if_config_enables_unsupported_option(option):
    with pytest.raises(SettingsError, match=f"{option}=true"):
        FlowMatchConfig.from_dict(dict(QWEN_IMAGE_SCHEDULER_JSON, **{option: True}))


def test_error_raised_if_config_has_unknown_key():
    with pytest.raises(SettingsError, match="sigma_schedule"):
        FlowMatchConfig.from_dict(dict(QWEN_IMAGE_SCHEDULER_JSON, sigma_schedule="cosine"))


def test_error_names_the_file_when_file_config_is_bad(tmp_path):
    path = tmp_path / "scheduler_config.json"
    path.write_text(json.dumps(dict(QWEN_IMAGE_SCHEDULER_JSON, use_karras_sigmas=True)))
    with pytest.raises(SettingsError, match=re.escape(f"{path}: Scheduler option use_karras_sigmas=true")):
        FlowMatchConfig.from_file(path)
    path.write_text("{not json")
    with pytest.raises(SettingsError, match="not valid JSON"):
        FlowMatchConfig.from_file(path)


def test_error_raised_if_config_file_is_missing(tmp_path):
    with pytest.raises(MissingFilesError, match="scheduler_config.json"):
        FlowMatchConfig.from_file(tmp_path / "scheduler_config.json")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("num_train_timesteps", 0),
        ("shift", 0.0),
        ("shift", math.inf),
        ("base_image_seq_len", 1.5),
        ("max_image_seq_len", 256),
        ("max_shift", "0.9"),
        ("use_dynamic_shifting", 1),
        ("shift_terminal", 1.0),
        ("shift_terminal", 0.0),
        ("time_shift_type", "cosine"),
    ],
)
def test_error_names_the_field_when_config_value_is_bad(field, value):
    with pytest.raises(SettingsError, match=field):
        dataclasses.replace(QWEN_IMAGE, **{field: value})


def test_time_shift_type_becomes_enum_when_given_as_string():
    assert FlowMatchConfig(time_shift_type="linear").time_shift_type is TimeShiftType.LINEAR
