"""The LoRA stack: several LoRAs with weights, changed and removed without touching the base weights, and
the whole transformer computing what a copy with merged weights computes."""

from __future__ import annotations

import copy

import pytest
import torch

from engine.lora.normalize import LoraDelta
from engine.lora.stack import LoraStack
from tests.engine.lora.conftest import TARGETS, known_lora, transformer_inputs


def deltas_of(lora) -> dict[str, LoraDelta]:
    return {layer: LoraDelta(lora.down[layer], lora.up[layer], lora.alpha) for layer in lora.down}


def merged_copy(transformer, *weighted) -> torch.nn.Module:
    """The definition: a copy whose weights are base + sum of weight * delta."""
    merged = copy.deepcopy(transformer)
    with torch.no_grad():
        for lora, weight in weighted:
            for layer in lora.down:
                merged.get_submodule(layer).weight += weight * lora.delta(layer)
    return merged


def forward(transformer) -> torch.Tensor:
    with torch.no_grad():
        return transformer(**transformer_inputs(transformer))[0]


def snapshot(transformer) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in transformer.state_dict().items()}


def test_transformer_output_equals_merged_weights_when_two_loras_stack(transformer, stack):
    first = known_lora(transformer, seed=10)
    second = known_lora(transformer, seed=11, rank=2, alpha=None,
                        targets=TARGETS[2:] + ("transformer_blocks.1.attn.to_v",))
    reference = forward(merged_copy(transformer, (first, 0.8), (second, -0.5)))
    before = forward(transformer)
    stack.add("first", deltas_of(first), 0.8)
    stack.add("second", deltas_of(second), -0.5)
    ours = forward(transformer)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    assert (ours - before).abs().max() > 1e-2  # the LoRAs do change the output
    # A copy made while hooked computes without the LoRAs (a copy is not bitwise: its memory layout differs).
    torch.testing.assert_close(forward(copy.deepcopy(transformer)), before, rtol=0, atol=1e-5)
    for layer in TARGETS[2:]:
        expected = transformer.get_submodule(layer).weight + 0.8 * first.delta(layer) - 0.5 * second.delta(layer)
        torch.testing.assert_close(stack.effective_weight(layer), expected.detach(), rtol=0, atol=1e-6)


def test_output_follows_the_new_weight_when_a_weight_changes(transformer, stack):
    lora = known_lora(transformer, seed=12)
    stack.add("lora", deltas_of(lora), 1.0)
    stack.set_weight("lora", 0.25)
    assert stack.weight("lora") == 0.25
    torch.testing.assert_close(forward(transformer), forward(merged_copy(transformer, (lora, 0.25))),
                               rtol=1e-5, atol=1e-5)


def test_model_is_bitwise_as_before_when_every_lora_is_removed(transformer, stack):
    before, output = snapshot(transformer), forward(transformer)
    first, second = known_lora(transformer, seed=13), known_lora(transformer, seed=14)
    stack.add("first", deltas_of(first), 1.0)
    stack.add("second", deltas_of(second), 2.0)
    assert not torch.equal(forward(transformer), output)
    stack.remove("first")
    torch.testing.assert_close(forward(transformer), forward(merged_copy(transformer, (second, 2.0))),
                               rtol=1e-5, atol=1e-5)
    stack.remove("second")
    assert stack.keys == []
    assert not any(module._forward_hooks for module in transformer.modules())
    after = snapshot(transformer)
    assert all(torch.equal(after[name], before[name]) for name in before)
    assert torch.equal(forward(transformer), output)


def test_layer_has_no_hook_when_its_lora_weight_is_zero(transformer, stack):
    output = forward(transformer)
    stack.add("lora", deltas_of(known_lora(transformer, seed=15)), 0.0)
    assert not any(module._forward_hooks for module in transformer.modules())
    assert torch.equal(forward(transformer), output)


def test_lora_follows_the_input_dtype_when_the_network_computes_in_bfloat16(transformer):
    """Storage plans keep base weights in another dtype or device; the LoRA is cast to each input's, once."""
    lora = known_lora(transformer, seed=16)
    network = copy.deepcopy(transformer).bfloat16()
    layer = network.get_submodule(TARGETS[0])
    x = torch.randn(2, layer.in_features).bfloat16()
    down, up = lora.down[TARGETS[0]].bfloat16(), lora.up[TARGETS[0]].bfloat16()
    reference = layer(x) + (x @ down.T @ up.T) * lora.scale
    hooked = LoraStack(network)
    hooked.add("lora", deltas_of(lora), 1.0)
    out = layer(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, reference, rtol=0, atol=1e-2)
    assert not torch.equal(out, layer.forward(x))  # forward() bypasses hooks: the LoRA is what differs
    factors = hooked._loras["lora"].factors[TARGETS[0]]
    assert list(factors.copies) == [(torch.device("cpu"), torch.bfloat16)]
    hooked.clear()


def test_hooks_move_to_a_rebuilt_network_when_attached(transformer, stack, tiny_qwen_dir):
    """A VRAM plan may build the transformer again (another storage precision): the LoRAs follow it."""
    from diffusers import QwenImageTransformer2DModel

    lora = known_lora(transformer, seed=17)
    stack.add("lora", deltas_of(lora), 0.5)
    rebuilt = QwenImageTransformer2DModel.from_pretrained(tiny_qwen_dir / "transformer", torch_dtype=torch.float32)
    stack.attach(rebuilt)
    assert not any(module._forward_hooks for module in transformer.modules())
    torch.testing.assert_close(forward(rebuilt), forward(merged_copy(transformer, (lora, 0.5))), rtol=1e-5, atol=1e-5)
    stack.attach(transformer)
    assert not any(module._forward_hooks for module in rebuilt.modules())


def test_error_raised_if_a_key_is_used_twice_or_is_unknown(transformer, stack):
    stack.add("lora", deltas_of(known_lora(transformer, seed=18)), 1.0)
    with pytest.raises(KeyError, match="already applied"):
        stack.add("lora", {}, 1.0)
    with pytest.raises(KeyError, match="no LoRA is applied as 'other'"):
        stack.set_weight("other", 1.0)
    with pytest.raises(KeyError, match="no linear layer 'transformer_blocks.9.attn.to_q'"):
        stack.add("bad", {"transformer_blocks.9.attn.to_q": LoraDelta(torch.zeros(1, 32), torch.zeros(32, 1), None)})
