"""Every LoRA format met in the wild, built from a known low-rank update: the layers act with exactly
base + weight * (alpha / rank) * up @ down, and keys that do not fit are refused with a message that says why."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from engine.errors import LoraError
from engine.lora.files import read_lora_info, read_lora_tensors
from engine.lora.keys import LoraFormat
from engine.lora.normalize import linear_layers, normalize
from tests.engine.lora.conftest import TARGETS, known_lora, write_format

FORMATS = {"diffusers": LoraFormat.DIFFUSERS, "peft": LoraFormat.PEFT, "peft-adapter": LoraFormat.PEFT_ADAPTER,
           "kohya": LoraFormat.KOHYA, "comfyui": LoraFormat.COMFYUI, "comfyui-ab": LoraFormat.COMFYUI}


def load_into(stack, path, weight: float = 1.0, key: str = "lora"):
    tensors, _ = read_lora_tensors(path)
    deltas = normalize(tensors, linear_layers(stack.network), name=path.name, architecture="Qwen-Image")
    stack.add(key, deltas, weight)
    return deltas


@pytest.mark.parametrize("alpha", [2.0, None], ids=["with-alpha", "without-alpha"])
@pytest.mark.parametrize("form", list(FORMATS))
def test_layers_act_with_base_plus_weighted_delta_when_format_is(form, alpha, transformer, stack, tmp_path):
    lora = known_lora(transformer, seed=1, alpha=alpha)
    path = write_format(lora, form, tmp_path / f"{form}.safetensors")
    assert read_lora_info(path).format is FORMATS[form]
    deltas = load_into(stack, path, weight=0.7)
    assert sorted(deltas) == sorted(TARGETS)
    generator = torch.Generator().manual_seed(5)
    for layer in TARGETS:
        linear = transformer.get_submodule(layer)
        expected = linear.weight.detach() + 0.7 * lora.delta(layer)
        torch.testing.assert_close(stack.effective_weight(layer), expected, rtol=0, atol=1e-6)
        x = torch.randn(3, linear.in_features, generator=generator)
        torch.testing.assert_close(linear(x), F.linear(x, expected, linear.bias), rtol=1e-5, atol=1e-5)


def test_untargeted_layers_keep_their_weights_when_a_lora_is_applied(transformer, stack, tmp_path):
    load_into(stack, write_format(known_lora(transformer, seed=2), "kohya", tmp_path / "k.safetensors"))
    for layer in set(linear_layers(transformer)) - set(TARGETS):
        assert torch.equal(stack.effective_weight(layer), transformer.get_submodule(layer).weight)


def test_half_precision_files_apply_their_rounded_values_when_stored_in_bfloat16(transformer, stack, tmp_path):
    lora = known_lora(transformer, seed=3)
    path = write_format(lora, "kohya", tmp_path / "bf16.safetensors", dtype=torch.bfloat16)
    load_into(stack, path)
    layer = TARGETS[0]
    rounded = lora.scale * (lora.up[layer].bfloat16().float() @ lora.down[layer].bfloat16().float())
    expected = transformer.get_submodule(layer).weight.detach() + rounded
    torch.testing.assert_close(stack.effective_weight(layer), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("prefix", ["lora_unet_", "lycoris_", "lora_transformer_"])
def test_underscored_names_resolve_against_the_model_when_module_names_hold_underscores(transformer, prefix):
    """'transformer_blocks_0_attn_add_k_proj' has six underscores, of which only three were dots."""
    lora = known_lora(transformer, seed=4, targets=("transformer_blocks.0.attn.add_k_proj",
                                                    "transformer_blocks.1.txt_mlp.net.0.proj",
                                                    "time_text_embed.timestep_embedder.linear_1"))
    tensors = {}
    for layer in lora.down:
        tensors[f"{prefix}{layer.replace('.', '_')}.lora_down.weight"] = lora.down[layer]
        tensors[f"{prefix}{layer.replace('.', '_')}.lora_up.weight"] = lora.up[layer]
    deltas = normalize(tensors, linear_layers(transformer), name="k", architecture="Qwen-Image")
    assert sorted(deltas) == sorted(lora.down)
    assert all(torch.equal(deltas[layer].up @ deltas[layer].down, lora.up[layer] @ lora.down[layer])
               for layer in lora.down)


# ---- keys that do not fit


def refusal(transformer, tensors: dict[str, torch.Tensor], name: str = "other.safetensors") -> str:
    with pytest.raises(LoraError) as error:
        normalize(tensors, linear_layers(transformer), name=name, architecture="Qwen-Image")
    return str(error.value)


def pair(rows: int, columns: int, rank: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros(rank, columns), torch.zeros(rows, rank)


@pytest.mark.parametrize(("keys", "family"), [
    (["double_blocks.0.img_attn.qkv", "single_blocks.3.linear1"], "FLUX.1"),
    (["transformer.single_transformer_blocks.0.attn.to_q", "transformer.transformer_blocks.0.attn.to_q"], "FLUX.1"),
    (["lora_unet_double_blocks_0_img_attn_qkv"], "FLUX.1"),
    (["lora_unet_down_blocks_1_attentions_0_proj_in", "lora_te2_text_model_encoder_layers_0_mlp_fc1"], "SDXL"),
    (["lora_unet_down_blocks_1_attentions_0_proj_in", "lora_te_text_model_encoder_layers_0_mlp_fc1"],
     "Stable Diffusion (1.x, 2.x or SDXL)"),
    (["unet.down_blocks.1.attentions.0.proj_in", "text_encoder.text_model.encoder.layers.0.mlp.fc1"],
     "Stable Diffusion (1.x, 2.x or SDXL)"),
    (["diffusion_model.blocks.0.self_attn.q", "diffusion_model.blocks.0.cross_attn.k"], "Wan 2.x"),
    (["lora_unet_blocks_0_self_attn_q"], "Wan 2.x"),
    (["transformer.blocks.3.attn1.to_q"], "Wan 2.x"),
], ids=["flux-original", "flux-diffusers", "flux-kohya", "sdxl", "sd", "sd-diffusers", "wan-comfyui", "wan-musubi",
        "wan-diffusers"])
def test_error_raised_if_lora_is_for_another_architecture(transformer, keys, family):
    tensors = {}
    for key in keys:
        down, up = pair(32, 32)
        suffix = (".lora_down.weight", ".lora_up.weight") if "lora_unet" in key or "lora_te" in key else \
            (".lora_A.weight", ".lora_B.weight")
        tensors[key + suffix[0]], tensors[key + suffix[1]] = down, up
    assert refusal(transformer, tensors) == \
        f"other.safetensors looks like a LoRA for {family}, not Qwen-Image. Use a LoRA made for Qwen-Image."


def test_error_names_matched_count_and_one_key_if_keys_do_not_fit(transformer):
    down, up = pair(32, 32)
    tensors = {"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": down,
               "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": up,
               "transformer.transformer_blocks.7.attn.to_q.lora_A.weight": down,
               "transformer.transformer_blocks.7.attn.to_q.lora_B.weight": up,
               "transformer.transformer_blocks.0.attn.to_q.lora_magnitude_vector": torch.zeros(32)}
    assert refusal(transformer, tensors) == (
        "other.safetensors does not fit Qwen-Image: 2 of 5 keys match its layers; "
        "'transformer.transformer_blocks.0.attn.to_q.lora_magnitude_vector' does not. "
        "Use a LoRA made for Qwen-Image.")


def test_error_names_the_layer_if_shapes_do_not_fit(transformer):
    down, up = pair(128, 32, rank=4)  # img_mlp.net.0.proj's shape, on to_k
    tensors = {"transformer_blocks.1.attn.to_k.lora_A.weight": down, "transformer_blocks.1.attn.to_k.lora_B.weight": up}
    assert refusal(transformer, tensors) == (
        "other.safetensors does not fit the layer transformer_blocks.1.attn.to_k: it takes 32 inputs and gives 32 "
        "outputs, the LoRA's matrices are [4, 32] (down) and [128, 4] (up). "
        "The LoRA was made for another model or another size of it.")


def test_error_raised_if_a_layer_has_only_one_matrix(transformer):
    down, _ = pair(32, 32)
    tensors = {"lora_unet_transformer_blocks_0_attn_to_v.lora_down.weight": down,
               "lora_unet_transformer_blocks_0_attn_to_v.alpha": torch.tensor(2.0)}
    assert refusal(transformer, tensors) == (
        "other.safetensors is incomplete: the layer transformer_blocks.0.attn.to_v has no up matrix. "
        "Download the LoRA again.")


def test_error_raised_if_file_holds_no_tensors(transformer):
    assert refusal(transformer, {}) == "other.safetensors holds no tensors: it is not a LoRA. Download the LoRA again."


def test_error_raised_if_two_adapters_target_one_layer(transformer):
    down, up = pair(32, 32)
    tensors = {"transformer_blocks.0.attn.to_q.lora_A.default.weight": down,
               "transformer_blocks.0.attn.to_q.lora_B.default.weight": up,
               "transformer_blocks.0.attn.to_q.lora_A.other.weight": down,
               "transformer_blocks.0.attn.to_q.lora_B.other.weight": up}
    assert refusal(transformer, tensors) == ("other.safetensors holds two down tensors for the layer "
                                             "transformer_blocks.0.attn.to_q. Save the LoRA with one adapter only.")


def test_file_round_trips_keys_unchanged_when_read(transformer, tmp_path):
    """read_lora_tensors hands over the file's tensors as stored (normalize does the rest)."""
    path = write_format(known_lora(transformer, seed=6), "comfyui", tmp_path / "c.safetensors")
    tensors, metadata = read_lora_tensors(path)
    assert metadata == {}
    reference = load_file(str(path))
    assert sorted(tensors) == sorted(reference) and all(torch.equal(tensors[k], reference[k]) for k in reference)
