"""Our LoRA files: keys that diffusers and ComfyUI load, alpha baked in, metadata, atomic writes; header-only
summaries of any LoRA; clear refusals of missing, damaged and pickle files."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors import safe_open

from engine.errors import LoraError
from engine.lora.files import LoraInfo, read_lora_info, read_lora_tensors, save_lora
from engine.lora.keys import LoraFormat
from engine.lora.normalize import linear_layers, normalize
from engine.lora.stack import LoraStack
from tests.engine.lora.conftest import known_lora, transformer_inputs, with_peft_lora, write_format

PEFT_TARGETS = ["to_q", "to_k", "to_v", "add_q_proj", "to_out.0", "to_add_out", "img_mlp.net.2", "txt_mod.1"]


@pytest.fixture(scope="module")
def trained(transformer):
    """The transformer with a random PEFT LoRA, and the state peft hands to save_lora."""
    return with_peft_lora(transformer, rank=4, alpha=8, targets=PEFT_TARGETS, seed=0, scale=0.2)


def test_saved_lora_acts_as_the_peft_model_did_when_loaded_back(trained, transformer, tmp_path):
    network, state = trained
    path = save_lora(tmp_path / "star.safetensors", state, rank=4, alpha=8, base_model="Qwen/Qwen-Image")
    with torch.no_grad():
        expected = network(**transformer_inputs(network))[0]
        plain = transformer(**transformer_inputs(transformer))[0]
    tensors, _ = read_lora_tensors(path)
    deltas = normalize(tensors, linear_layers(transformer), name=path.name, architecture="Qwen-Image")
    assert {delta.alpha for delta in deltas.values()} == {None}  # alpha/rank is in lora_B: applied with scale 1
    stack = LoraStack(transformer)
    stack.add("star", deltas, 1.0)
    try:
        with torch.no_grad():
            ours = transformer(**transformer_inputs(transformer))[0]
    finally:
        stack.clear()
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    assert (expected - plain).abs().max() > 1e-2


def test_saved_keys_are_diffusers_names_without_adapter_and_lora_b_holds_alpha_over_rank(trained, tmp_path):
    _, state = trained
    raw = {key.replace(".lora_A.", ".lora_A.default.").replace(".lora_B.", ".lora_B.default."): value
           for key, value in state.items()}  # as a raw state_dict() of the adapter model has them
    path = save_lora(tmp_path / "a.safetensors", raw, rank=4, alpha=2, base_model="Qwen/Qwen-Image")
    with safe_open(str(path), "pt") as handle:
        keys = sorted(handle.keys())
        up = handle.get_tensor("transformer.transformer_blocks.1.attn.to_q.lora_B.weight")
        down = handle.get_tensor("transformer.transformer_blocks.1.attn.to_q.lora_A.weight")
    assert keys == sorted(f"transformer.{key}" for key in state)
    assert not any(".default." in key for key in keys)
    torch.testing.assert_close(up, state["transformer_blocks.1.attn.to_q.lora_B.weight"] * 0.5, rtol=0, atol=0)
    torch.testing.assert_close(down, state["transformer_blocks.1.attn.to_q.lora_A.weight"], rtol=0, atol=0)


def comfyui_qwen_image_key_map(transformer) -> dict[str, str]:
    """ComfyUI's rule for Qwen-Image LoRAs, as in comfy/lora.py (model_lora_keys_unet, the branch
    `isinstance(model, comfy.model_base.QwenImage)`): for every state-dict key "diffusion_model.<k>.weight" it maps
    "<k>", "transformer.<k>" and "lycoris_<k with dots as underscores>" to it. ComfyUI's Qwen-Image network
    (comfy/ldm/qwen_image/model.py) names its layers as diffusers does, so our state dict stands in for it."""
    key_map = {}
    for name in transformer.state_dict():
        if name.endswith(".weight"):
            key = name[:-len(".weight")]
            target = f"diffusion_model.{name}"
            key_map[key] = key_map[f"transformer.{key}"] = key_map["lycoris_" + key.replace(".", "_")] = target
    return key_map


def comfyui_loaded_keys(tensors: dict[str, torch.Tensor], key_map: dict[str, str]) -> set[str]:
    """comfy/lora.py load_lora for plain LoRAs: for each mapped x, "x.lora_B.weight" with "x.lora_A.weight"
    (or "x.lora_up.weight" with "x.lora_down.weight"), and "x.alpha" when present; other keys are not loaded."""
    loaded = set()
    for x in key_map:
        pairs = ((f"{x}.lora_up.weight", f"{x}.lora_down.weight"), (f"{x}.lora_B.weight", f"{x}.lora_A.weight"))
        for up, down in pairs:
            if up in tensors:
                loaded |= {up, down}
                break
        if f"{x}.alpha" in tensors:
            loaded.add(f"{x}.alpha")
    return loaded


def test_every_key_loads_in_comfyui_when_its_qwen_image_rule_is_applied(trained, transformer, tmp_path):
    _, state = trained
    path = save_lora(tmp_path / "c.safetensors", state, rank=4, alpha=8, base_model="Qwen/Qwen-Image")
    tensors, _ = read_lora_tensors(path)
    assert comfyui_loaded_keys(tensors, comfyui_qwen_image_key_map(transformer)) == set(tensors)


def test_comfyui_rule_refuses_keys_with_adapter_names_like_diffsynth_writes(transformer, tmp_path):
    """The check above can fail: DiffSynth's ".default." keys are exactly what ComfyUI does not load."""
    path = write_format(known_lora(transformer, seed=1, alpha=None), "peft-adapter", tmp_path / "d.safetensors")
    tensors, _ = read_lora_tensors(path)
    assert comfyui_loaded_keys(tensors, comfyui_qwen_image_key_map(transformer)) == set()


def test_metadata_says_what_the_lora_is_when_read_from_the_header(trained, tmp_path):
    _, state = trained
    path = save_lora(tmp_path / "m.safetensors", state, rank=4, alpha=8, base_model="Qwen/Qwen-Image",
                     trigger_words=["sks star", "étoile"], steps=1200, extra={"learning_rate": "0.0001"})
    assert read_lora_info(path) == LoraInfo(path=path, base_model="Qwen/Qwen-Image", rank=4, alpha=8.0,
                                            trigger_words=("sks star", "étoile"), steps=1200,
                                            format=LoraFormat.STUDIO, tensors=len(state))
    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata()
    assert metadata == {"format": "diffusion-studio/lora-v1", "base_model": "Qwen/Qwen-Image", "rank": "4",
                        "alpha": "8", "trigger_words": json.dumps(["sks star", "étoile"], ensure_ascii=False),
                        "steps": "1200", "learning_rate": "0.0001",
                        "alpha_baked": "every lora_B holds alpha/rank = 2 already: apply with scale 1 (alpha = rank)"}


def test_header_summary_reads_kohya_metadata_and_rank_when_file_is_not_ours(transformer, tmp_path):
    path = write_format(known_lora(transformer, seed=2, rank=3), "kohya", tmp_path / "k.safetensors")
    info = read_lora_info(path)
    assert (info.format, info.rank, info.alpha, info.trigger_words, info.steps, info.base_model, info.tensors) == \
        (LoraFormat.KOHYA, 3, None, (), 0, "", 24)


def test_nothing_is_left_behind_when_writing_fails(tmp_path):
    with pytest.raises(ValueError, match="no matching lora_B tensor"):
        save_lora(tmp_path / "x.safetensors", {"a.lora_A.weight": torch.zeros(4, 8)}, rank=4, alpha=4, base_model="")
    with pytest.raises(ValueError, match="extra metadata may not replace 'rank'"):
        pair = {"a.lora_A.weight": torch.zeros(4, 8), "a.lora_B.weight": torch.zeros(8, 4)}
        save_lora(tmp_path / "x.safetensors", pair, rank=4, alpha=4, base_model="", extra={"rank": "8"})
    with pytest.raises(ValueError, match=r"'a.lora_A.weight' has shape \[2, 8\], not a rank-4 LoRA matrix"):
        save_lora(tmp_path / "x.safetensors", {"a.lora_A.weight": torch.zeros(2, 8)}, rank=4, alpha=4, base_model="")
    assert list(tmp_path.iterdir()) == []


def test_file_is_replaced_whole_when_saved_again(trained, tmp_path):
    _, state = trained
    path = save_lora(tmp_path / "s.safetensors", state, rank=4, alpha=8, base_model="a", steps=10)
    save_lora(path, state, rank=4, alpha=8, base_model="a", steps=20)
    assert read_lora_info(path).steps == 20
    assert [entry.name for entry in tmp_path.iterdir()] == ["s.safetensors"]


# ---- files that are not usable LoRAs


def refusal(path) -> str:
    with pytest.raises(LoraError) as error:
        read_lora_info(path)
    with pytest.raises(LoraError) as second:
        read_lora_tensors(path)
    assert str(second.value) == str(error.value)
    return str(error.value)


def test_error_raised_if_lora_file_is_missing(tmp_path):
    path = tmp_path / "gone.safetensors"
    assert refusal(path) == f"The LoRA file {path} does not exist. Check the path, or pick the LoRA again."


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".bin"])
def test_error_raised_if_lora_is_a_pickle_file(tmp_path, suffix):
    path = tmp_path / f"old{suffix}"
    path.write_bytes(b"\x80\x04pickle")
    assert refusal(path) == (f"old{suffix} is not a .safetensors file; LoRAs are only read from safetensors, because "
                             "pickle files (.ckpt, .pt, .bin) can run code when opened. "
                             "Use the .safetensors version of this LoRA.")


def test_error_raised_if_lora_file_is_truncated(transformer, tmp_path):
    path = write_format(known_lora(transformer, seed=3), "diffusers", tmp_path / "cut.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    assert refusal(path) == (f"Not a usable LoRA: {path} is truncated: the header promises {len(data):,} bytes but the "
                             f"file has {len(data) - 100:,}. Download the LoRA again.")


def test_error_raised_if_lora_file_is_not_safetensors_inside(tmp_path):
    path = tmp_path / "page.safetensors"
    path.write_bytes(struct.pack("<Q", 12) + b"<html>oops</")
    assert refusal(path) == f"Not a usable LoRA: {path} is not a valid safetensors file (damaged header). " \
                            "Download the LoRA again."
