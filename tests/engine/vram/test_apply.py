"""Plans put into effect on a tiny model on the CPU: whatever the placement, the pixels equal the all-resident
run's, bitwise in the same dtype; fp8 storage within a stated tolerance."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import engine
from engine.vram.vocabulary import Placement, Precision
from engine.presets import Role
from tests.engine.vram.conftest import SETTINGS, load_with, streamed

# fp8 (e4m3) storage of the transformer blocks against float32, on pixels in [0, 1] of the tiny random model.
FP8_MAX_ABS = 0.02


@pytest.fixture(scope="module")
def reference(split_parts, resident_plan):
    return load_with(split_parts, resident_plan).generate("a red circle", **SETTINGS).pixels


def test_resident_plan_adds_no_hooks_and_keeps_the_modules_copyable(split_parts, resident_plan):
    import copy

    model = load_with(split_parts, resident_plan)
    transformer = model.modules.transformer
    assert not transformer._forward_pre_hooks and all(not block._forward_pre_hooks
                                                      for block in transformer.transformer_blocks)
    copy.deepcopy(transformer)


def test_pixels_bitwise_equal_when_blocks_stream_from_ram(split_parts, resident_plan, reference):
    plan = streamed(streamed(resident_plan, Role.TRANSFORMER, resident=2), Role.TEXT_ENCODER, resident=1)
    plan = plan.with_component(replace(plan.component(Role.VAE), stays=False, parked_in=Placement.RAM))
    model = load_with(split_parts, plan)
    assert torch.equal(model.generate("a red circle", **SETTINGS).pixels, reference)


def test_pixels_bitwise_equal_when_blocks_stream_from_disk(split_parts, resident_plan, reference):
    plan = streamed(resident_plan, Role.TRANSFORMER, resident=1, disk=3, parked=Placement.DISK, parked_disk=1)
    plan = streamed(plan, Role.TEXT_ENCODER, resident=0, disk=4, parked=Placement.DISK)
    model = load_with(split_parts, plan)
    result = model.generate("a red circle", **SETTINGS)
    assert torch.equal(result.pixels, reference)
    # After the run every streamed block holds no memory: its parameters are back on the meta device.
    blocks = model.modules.transformer.transformer_blocks
    assert sum(all(p.device.type == "meta" for p in block.parameters()) for block in blocks) == 4  # parked too
    assert result.plan is plan


def test_pixels_bitwise_equal_when_ram_and_disk_mix_and_the_model_runs_twice(split_parts, resident_plan, reference):
    plan = streamed(resident_plan, Role.TRANSFORMER, resident=2, disk=1, parked=Placement.RAM)
    model = load_with(split_parts, plan)
    first = model.generate("a red circle", **SETTINGS).pixels
    second = model.generate("a red circle", **SETTINGS).pixels  # prefetch order learned on the first run
    assert torch.equal(first, reference) and torch.equal(second, reference)


def test_fp8_storage_within_tolerance_and_streaming_it_changes_nothing(split_parts, resident_plan, reference):
    fp8 = resident_plan.with_component(replace(resident_plan.component(Role.TRANSFORMER), precision=Precision.FP8))
    resident = load_with(split_parts, fp8)
    linear = resident.modules.transformer.transformer_blocks[0].attn.to_q
    assert linear.weight.dtype == torch.float8_e4m3fn
    pixels = resident.generate("a red circle", **SETTINGS).pixels
    assert 0 < (pixels - reference).abs().max().item() <= FP8_MAX_ABS
    stream = load_with(split_parts, streamed(fp8, Role.TRANSFORMER, resident=1, disk=2, parked=Placement.DISK))
    assert torch.equal(stream.generate("a red circle", **SETTINGS).pixels, pixels)


def test_vae_tiling_follows_the_plan(split_parts, resident_plan):
    plan = resident_plan.with_component(replace(resident_plan.component(Role.VAE), tiled=True))
    assert load_with(split_parts, plan).modules.vae.use_tiling
    assert not load_with(split_parts, resident_plan).modules.vae.use_tiling


def test_engine_load_plans_within_the_ram_limit_given(split_dir):
    from engine.vram.vocabulary import DeviceKind, gib

    model = engine.load(split_dir, device="cpu", ram_gb=2)
    assert model.plan.budget.device is DeviceKind.CPU and model.plan.budget.device_bytes == gib(2)
    assert model.plan.peak_device <= gib(2)


def test_error_raised_if_vram_limit_is_given_for_a_cpu_model(split_dir):
    from engine.errors import SettingsError

    with pytest.raises(SettingsError, match="vram_gb applies to a GPU"):
        engine.load(split_dir, device="cpu", vram_gb=4)


def test_plan_for_model_is_the_current_plan_when_it_fits_and_a_new_one_when_not(split_parts):
    from engine.vram import planner
    from engine.vram.preset_plan import plan_for_model
    from engine.vram.vocabulary import DeviceKind, Mode, Precision
    from engine.vram.workload import Workload

    # The least memory 128x128 needs: planned for 64x64 there, more stays resident than 128x128 allows.
    sizes, roomy = split_parts[2], planner.Budget(DeviceKind.CPU, 2**30, compute=Precision.FP32, reserve=0)
    least = planner.smallest_budget(sizes, Workload(128, 128), roomy, Mode.STREAM)
    budget = planner.Budget(DeviceKind.CPU, least, compute=Precision.FP32, reserve=0)
    model = load_with(split_parts, planner.plan(sizes, Workload(64, 64), budget, Mode.STREAM))
    assert plan_for_model(model, model.settings("a red circle", width=64, height=64)) is model.plan
    bigger = plan_for_model(model, model.settings("a red circle", width=128, height=128))
    assert bigger.components != model.plan.components and bigger.budget == model.plan.budget
    result = model.generate("a red circle", width=128, height=128, steps=2, seed=1)
    assert result.plan == bigger and result.notes[0].startswith("128x128 needs another plan than 64x64")
