"""The same placements on a CUDA device, where copies really move between RAM and GPU on a side stream."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from engine.presets import Role
from engine.vram import planner
from engine.vram.vocabulary import DeviceKind, Placement, Precision
from engine.vram.workload import Workload
from tests.engine.vram.conftest import SETTINGS, streamed

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def load_on_cuda(split_parts, plan):
    import engine
    from engine.pipelines.preview import LatentProjection
    from engine.vram.apply import load_qwen_image

    preset, components, sizes = split_parts
    planned = load_qwen_image(components, sizes, plan, torch.device("cuda"), torch.bfloat16)
    return engine.Model(preset=preset, modules=planned.modules, projection=LatentProjection.wan21(), planned=planned)


@pytest.fixture(scope="module")
def cuda_plan(split_parts):
    return planner.plan(split_parts[2], Workload(64, 64), planner.Budget.gpu(8, 16))


def test_probe_reports_the_gpu():
    from engine.vram.probe import probe

    facts = probe("cuda")
    assert facts.device is DeviceKind.CUDA and 0 < facts.vram_available <= facts.vram_total and facts.pinnable > 0


def test_pixels_bitwise_equal_when_streaming_from_pinned_ram_and_disk_on_cuda(split_parts, cuda_plan):
    reference = load_on_cuda(split_parts, cuda_plan).generate("a red circle", **SETTINGS).pixels
    pinned = streamed(cuda_plan, Role.TRANSFORMER, resident=1, pinned=True)
    assert torch.equal(load_on_cuda(split_parts, pinned).generate("a red circle", **SETTINGS).pixels, reference)
    disk = streamed(cuda_plan, Role.TRANSFORMER, resident=1, disk=3, parked=Placement.DISK, parked_disk=1)
    assert torch.equal(load_on_cuda(split_parts, disk).generate("a red circle", **SETTINGS).pixels, reference)


def test_fp8_storage_on_cuda_within_tolerance(split_parts, cuda_plan):
    reference = load_on_cuda(split_parts, cuda_plan).generate("a red circle", **SETTINGS).pixels
    fp8 = cuda_plan.with_component(replace(cuda_plan.component(Role.TRANSFORMER), precision=Precision.FP8))
    pixels = load_on_cuda(split_parts, fp8).generate("a red circle", **SETTINGS).pixels
    assert (pixels.float() - reference.float()).abs().max().item() <= 0.05
