"""LoRAs under every VRAM plan: blocks streamed from RAM or disk, fp8 storage. The LoRA's matrices follow each
input, so a streamed run with a LoRA equals the resident run with it, bitwise. The split model's fixtures are
imported from tests/engine/vram/conftest.py, so that pytest finds them here."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from engine.presets import Role
from engine.settings import LoraChoice
from engine.vram.vocabulary import Placement, Precision
from tests.engine.lora.conftest import known_lora, write_format
from tests.engine.vram.conftest import SETTINGS, load_with, resident_plan, split_dir, split_parts, streamed  # noqa: F401

# Layers in every one of the split model's 4 blocks, so streamed and resident blocks both carry the LoRA.
TARGETS = tuple(f"transformer_blocks.{block}.{layer}" for block in range(4)
                for layer in ("attn.to_q", "attn.add_v_proj", "img_mlp.net.2", "txt_mod.1")) + ("proj_out",)


@pytest.fixture(scope="module")
def lora_path(split_parts, resident_plan, tmp_path_factory):  # noqa: F811
    transformer = load_with(split_parts, resident_plan).modules.transformer
    lora = known_lora(transformer, seed=21, targets=TARGETS)
    return write_format(lora, "kohya", tmp_path_factory.mktemp("lora") / "blocks.safetensors")


def generate(model, lora_path, weight: float = 1.0) -> torch.Tensor:
    loras = [LoraChoice(str(lora_path), weight)] if weight else []
    return model.generate("a red circle", loras=loras, **SETTINGS).pixels


def test_streamed_run_with_lora_equals_resident_run_with_it(split_parts, resident_plan, lora_path):  # noqa: F811
    resident = load_with(split_parts, resident_plan)
    reference, plain = generate(resident, lora_path), generate(resident, lora_path, 0)
    assert (reference - plain).abs().max() > 1e-2
    plan = streamed(resident_plan, Role.TRANSFORMER, resident=1, disk=2, parked=Placement.DISK, parked_disk=1)
    model = load_with(split_parts, plan)
    assert torch.equal(generate(model, lora_path), reference)
    assert torch.equal(generate(model, lora_path), reference)  # the prefetch order learned on the first run
    assert torch.equal(generate(model, lora_path, 0), plain)


def test_lora_acts_on_fp8_stored_blocks_streamed_or_not(split_parts, resident_plan, lora_path):  # noqa: F811
    fp8 = resident_plan.with_component(replace(resident_plan.component(Role.TRANSFORMER), precision=Precision.FP8))
    model = load_with(split_parts, fp8)
    assert model.modules.transformer.transformer_blocks[0].attn.to_q.weight.dtype == torch.float8_e4m3fn
    with_lora, plain = generate(model, lora_path), generate(model, lora_path, 0)
    full = load_with(split_parts, resident_plan)
    # fp8 changes the pixels by at most ~0.02 (tests/engine/vram/test_apply.py); the LoRA's effect is far larger.
    assert (with_lora - generate(full, lora_path)).abs().max() <= 0.02 < (with_lora - plain).abs().max()
    stream = load_with(split_parts, streamed(fp8, Role.TRANSFORMER, resident=1, disk=2, parked=Placement.DISK))
    assert torch.equal(generate(stream, lora_path), with_lora)
