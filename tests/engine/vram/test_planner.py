"""The planner on the nominal sizes of the real models: every plan fits its budget, more memory never streams
more or reads more from disk, and the explanation says what was chosen."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from engine.presets import Role
from engine.vram.planner import Budget, ComponentPlan, PlanError, plan
from engine.vram.sizes import NOMINAL
from engine.vram.vocabulary import GIB, Compute, DeviceKind, Mode, Placement, Precision, gib
from engine.vram.workload import Workload

VRAM_GB = (6, 8, 12, 16, 24, 48, 80)
RAM_GB = (16, 32, 64, 128)
WORKLOADS = {
    "qwen_image": Workload(1328, 1328),
    "flux1_dev": Workload(1024, 1024, cfg=False),
    "wan21_t2v_14b": Workload(832, 480, frames=81),
}


def table(model: str) -> dict[tuple[int, int], object]:
    """(VRAM, RAM) -> the plan, or the PlanError when nothing fits."""
    plans = {}
    for vram, ram in itertools.product(VRAM_GB, RAM_GB):
        try:
            plans[vram, ram] = plan(NOMINAL[model], WORKLOADS[model], Budget.gpu(vram, ram))
        except PlanError as error:
            plans[vram, ram] = error
    return plans


@pytest.fixture(scope="module", params=sorted(WORKLOADS))
def plans(request):
    return request.param, table(request.param)


def test_every_qwen_image_budget_gets_a_plan():
    assert all(not isinstance(result, PlanError) for result in table("qwen_image").values())


def test_estimated_peaks_never_exceed_the_budget(plans):
    _, results = plans
    for (vram, ram), result in results.items():
        if isinstance(result, PlanError):
            continue
        assert result.peak_device <= gib(vram), (vram, ram)
        assert result.peak_ram <= gib(ram), (vram, ram)
        assert dict(result.phase_peaks).keys() == {"encode", "denoise", "decode"}


def test_more_vram_never_streams_more_transformer_blocks_or_reads_more_from_disk(plans):
    _, results = plans
    for ram in RAM_GB:
        feasible = [results[vram, ram] for vram in VRAM_GB if not isinstance(results[vram, ram], PlanError)]
        for smaller, larger in zip(feasible, feasible[1:]):
            assert larger.component(Role.TRANSFORMER).streamed_blocks <= \
                smaller.component(Role.TRANSFORMER).streamed_blocks
            for before, after in zip(smaller.components, larger.components):
                assert after.disk_bytes <= before.disk_bytes, (before.role, smaller.budget, larger.budget)


def test_more_ram_never_reads_more_from_disk(plans):
    _, results = plans
    for vram in VRAM_GB:
        feasible = [results[vram, ram] for ram in RAM_GB if not isinstance(results[vram, ram], PlanError)]
        for smaller, larger in zip(feasible, feasible[1:]):
            for before, after in zip(smaller.components, larger.components):
                assert after.disk_bytes <= before.disk_bytes, (before.role, vram)


def test_explanation_word_for_word_when_qwen_image_on_12_gb_with_64_gb_ram():
    result = plan(NOMINAL["qwen_image"], WORKLOADS["qwen_image"], Budget.gpu(12, 64))
    assert result.explanation == (
        "Qwen-Image at 1328x1328 on 12 GB: transformer in fp8, 29 of 60 blocks resident, 31 streamed from pinned "
        "RAM; text encoder streamed through the GPU from RAM, 16 of 60 blocks resident while it runs; VAE whole; "
        "peak ~11.8 GB.")


def test_explanation_word_for_word_when_everything_fits_on_80_gb():
    result = plan(NOMINAL["qwen_image"], WORKLOADS["qwen_image"], Budget.gpu(80, 128))
    assert result.explanation == ("Qwen-Image at 1328x1328 on 80 GB: transformer resident in bf16; text encoder "
                                  "resident; VAE whole; peak ~58.1 GB.")
    assert all(component.stays and not component.streamed_blocks for component in result.components)
    assert result.peak_ram == Budget.gpu(80, 128).host_reserve  # nothing needs a copy in RAM


def test_fp8_only_when_bf16_cannot_stay_resident():
    at_48 = plan(NOMINAL["qwen_image"], WORKLOADS["qwen_image"], Budget.gpu(48, 64))
    at_24 = plan(NOMINAL["qwen_image"], WORKLOADS["qwen_image"], Budget.gpu(24, 64))
    assert at_48.component(Role.TRANSFORMER).precision is Precision.BF16
    assert at_24.component(Role.TRANSFORMER).precision is Precision.FP8
    assert at_24.component(Role.TRANSFORMER).streamed_blocks == 0


def test_disk_streaming_when_ram_is_short():
    result = plan(NOMINAL["qwen_image"], WORKLOADS["qwen_image"], Budget.gpu(8, 16))
    transformer = result.component(Role.TRANSFORMER)
    assert transformer.disk_blocks > 0 and transformer.ram_blocks > 0
    assert "and disk (" in result.explanation
    assert result.staging_bytes > 0  # disk reads pass through a pinned staging buffer


def test_error_raised_if_nothing_fits_names_the_minimum():
    with pytest.raises(PlanError, match=r"Wan2.1-T2V-14B at 832x480x81 frames needs at least \d+\.\d GB of VRAM"):
        plan(NOMINAL["wan21_t2v_14b"], WORKLOADS["wan21_t2v_14b"], Budget.gpu(6, 64))


def test_mode_resident_refuses_what_does_not_fit_and_fp8_mode_stores_fp8_even_on_80_gb():
    with pytest.raises(PlanError, match="to keep everything resident"):
        plan(NOMINAL["qwen_image"], WORKLOADS["qwen_image"], Budget.gpu(24, 64), Mode.RESIDENT)
    fp8 = plan(NOMINAL["qwen_image"], WORKLOADS["qwen_image"], Budget.gpu(80, 128), Mode.FP8)
    assert fp8.component(Role.TRANSFORMER).precision is Precision.FP8


def test_mode_stream_keeps_bf16_and_streams_instead_of_fp8():
    result = plan(NOMINAL["qwen_image"], WORKLOADS["qwen_image"], Budget.gpu(24, 64), Mode.STREAM)
    transformer = result.component(Role.TRANSFORMER)
    assert transformer.precision is Precision.BF16 and 0 < transformer.resident_blocks < 60


def test_text_encoder_runs_on_the_cpu_when_the_gpu_cannot_hold_its_streaming_minimum():
    result = plan(NOMINAL["qwen_image"], WORKLOADS["qwen_image"], Budget.gpu(4, 64))
    assert result.component(Role.TEXT_ENCODER).compute is Compute.CPU
    assert "text encoder on the CPU" in result.explanation


def test_vae_tiled_when_its_decode_does_not_fit_whole():
    big = Workload(2048, 2048)
    result = plan(NOMINAL["qwen_image"], big, Budget.gpu(4, 64))
    assert result.component(Role.VAE).tiled and "VAE tiled" in result.explanation


def test_cpu_plan_keeps_everything_in_ram_when_it_fits_and_streams_from_disk_when_not():
    roomy = plan(NOMINAL["qwen_image"], Workload(512, 512), Budget.cpu(128))
    assert all(component.stays for component in roomy.components)
    tight = plan(NOMINAL["qwen_image"], Workload(512, 512), Budget.cpu(16), Mode.STREAM)
    transformer = tight.component(Role.TRANSFORMER)
    assert transformer.precision is Precision.FP32 and transformer.disk_blocks == transformer.streamed_blocks > 0
    assert tight.peak_ram <= gib(16)


def test_json_has_peak_components_and_explanation():
    data = plan(NOMINAL["qwen_image"], WORKLOADS["qwen_image"], Budget.gpu(12, 64)).to_json()
    assert isinstance(data["peak_vram_gb"], float) and 0 < data["peak_vram_gb"] <= 12
    assert set(data["components"]) == {"transformer", "text_encoder", "vae"}
    assert data["components"]["transformer"]["dtype"] == "float8_e4m3fn"
    assert data["components"]["transformer"]["placement"].startswith("in fp8, 29 of 60 blocks resident")
    assert data["explanation"].startswith("Qwen-Image at 1328x1328 on 12 GB")


def test_error_raised_if_a_component_plan_contradicts_itself():
    good = plan(NOMINAL["qwen_image"], WORKLOADS["qwen_image"], Budget.gpu(12, 64)).component(Role.TRANSFORMER)
    with pytest.raises(ValueError, match="disk_blocks"):
        replace(good, disk_blocks=good.streamed_blocks + 1)
    with pytest.raises(ValueError, match="stays"):
        replace(good, stays=True)
    with pytest.raises(ValueError, match="tiled applies to the VAE"):
        replace(good, tiled=True)


def test_error_raised_if_a_budget_is_impossible():
    with pytest.raises(ValueError, match="host_bytes"):
        Budget(DeviceKind.CPU, gib(8), host_bytes=gib(8))
    with pytest.raises(ValueError, match="pinnable"):
        Budget(DeviceKind.CUDA, gib(8), host_bytes=gib(8), pinnable=gib(9))
    assert Budget.gpu(24, 64).scaled(0.5).device_bytes == 12 * GIB


def test_component_plan_keeps_its_fields():
    component = ComponentPlan(Role.VAE, Compute.DEVICE, Precision.BF16, 0, 0, False, Placement.RAM, 0, True)
    assert component.streamed_blocks == 0 and component.ram_blocks == 0
