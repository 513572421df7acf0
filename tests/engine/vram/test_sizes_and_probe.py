"""Component sizes from safetensors headers (nothing loaded) or nominal figures; the machine probe."""

from __future__ import annotations

import pytest

from engine.presets import Role, load_preset, preset_for_folder
from engine.vram.probe import MachineFacts, probe
from engine.vram.sizes import NOMINAL, block_key, preset_sizes
from engine.vram.vocabulary import DeviceKind, Precision
from engine.vram.workload import Workload, activation_bytes, image_tokens


@pytest.mark.parametrize("name, key", [
    ("transformer_blocks.12.attn.to_q.weight", ("transformer_blocks", 12)),
    ("model.layers.3.mlp.up_proj.weight", ("model.layers", 3)),
    ("visual.blocks.0.attn.qkv.bias", ("visual.blocks", 0)),
    ("single_transformer_blocks.5.norm.linear.weight", ("single_transformer_blocks", 5)),
    ("transformer_blocks.0.attn.to_out.0.weight", ("transformer_blocks", 0)),
    ("img_in.weight", None),
    ("decoder.up_blocks.0.resnets.0.conv1.weight", None),
])
def test_block_key_finds_the_outermost_block_list(name, key):
    assert block_key(name) == key


def test_sizes_read_from_headers_when_the_files_are_on_disk(tiny_qwen_dir, tmp_path):
    sizes = preset_sizes(preset_for_folder(tiny_qwen_dir), tmp_path)
    transformer, text = sizes.component(Role.TRANSFORMER), sizes.component(Role.TEXT_ENCODER)
    assert sizes.measured and transformer.blocks == 2 and text.blocks == 3  # 2 decoder layers + 1 vision block
    assert text.block_sizes[0] == text.block_params > text.block_sizes[-1]  # the larger stack first
    assert sizes.component(Role.VAE).blocks == 0
    assert sizes.architecture.width == 32 and sizes.architecture.text_width == 32


def test_nominal_sizes_when_the_files_are_not_downloaded(tmp_path):
    sizes = preset_sizes(load_preset("qwen-image"), tmp_path)
    assert not sizes.measured and sizes == NOMINAL["qwen_image"]
    # REFERENCE.md: ~20.4B, ~8.3B, ~0.13B parameters.
    assert [round(sizes.component(role).params / 1e9, 1) for role in (Role.TRANSFORMER, Role.TEXT_ENCODER, Role.VAE)] \
        == [20.4, 8.3, 0.1]


def test_1328_square_is_6889_image_tokens_and_activations_grow_with_size():
    architecture = NOMINAL["qwen_image"].architecture
    assert image_tokens(Workload(1328, 1328), architecture) == 6889
    small, large = (activation_bytes(Role.TRANSFORMER, Workload(side, side), architecture, Precision.BF16)
                    for side in (512, 1328))
    assert small < large
    tiled = activation_bytes(Role.VAE, Workload(1328, 1328), architecture, Precision.BF16, tiled=True)
    assert tiled < activation_bytes(Role.VAE, Workload(1328, 1328), architecture, Precision.BF16) / 10


def test_probe_reports_this_cpu_machine():
    facts = probe("cpu")
    assert facts.device is DeviceKind.CPU and facts.vram_total == 0 and facts.pinnable == 0
    assert 0 < facts.ram_available <= facts.ram_total and facts.disk_free > 0
    assert "CPU" in facts.summary()


def test_error_raised_if_machine_facts_are_impossible():
    with pytest.raises(ValueError, match="CPU device has no VRAM"):
        MachineFacts(DeviceKind.CPU, "x", 1, 0, True, False, 8, 8, 0, 1)
