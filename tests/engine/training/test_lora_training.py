"""LoRA mode of the loop (peft): only the adapter trains and is checkpointed, a resumed run ends where the
uninterrupted one does, and accumulation, gradient checkpointing and fp8 storage keep what is learned."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file

from engine.schedulers.flow_match import QWEN_IMAGE
from engine.training import adapter, checkpoint
from engine.training.config import QWEN_IMAGE_LORA_TARGETS, TrainConfig
from engine.training.loop import CHECKPOINTS, SingleCache, step_generator, train, trained_weights
from engine.training.objective import flow_matching_loss, image_seq_len, sample_noise_levels

LORA = TrainConfig(steps=6, batch_size=4, learning_rate=1e-2, mode="lora", lora_rank=4, lora_alpha=8.0,
                   checkpoint_every=3, log_every=1, seed=1)


@pytest.fixture()
def transformer(tiny_model):
    return copy.deepcopy(tiny_model.modules.transformer)


def base_weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The frozen weights, by their names before peft wrapped them."""
    return {name.replace(".base_layer", ""): tensor.clone() for name, tensor in module.state_dict().items()
            if "lora_" not in name}


def test_only_the_adapter_trains_and_the_checkpoint_holds_only_it(transformer, tiny_model, shapes_cache, tmp_path):
    result = train(transformer, shapes_cache, LORA, QWEN_IMAGE, tmp_path)
    assert result.finished
    base = tiny_model.modules.transformer.state_dict()
    after = base_weights(transformer)
    assert after.keys() == base.keys() and all(torch.equal(after[name], base[name]) for name in base)
    lora = adapter.trainable_state(transformer)
    # One A and one B per targeted linear layer: 12 targets in each of the 2 blocks.
    assert len(lora) == 2 * len(QWEN_IMAGE_LORA_TARGETS) * 2
    assert any(name.endswith("lora_B.default.weight") and parameter.abs().sum() > 0 for name, parameter in lora.items())
    folder = checkpoint.latest(tmp_path / CHECKPOINTS)
    saved = load_file(str(folder / "lora.safetensors"))
    assert set(saved) == set(lora) and not (folder / "model.safetensors").exists()
    moments = load_file(str(folder / "optimizer.safetensors"))  # Adam's state, for the adapter's parameters only
    assert {int(key.split(".")[0]) for key in moments} <= set(range(len(lora)))
    assert sum(tensor.numel() for tensor in moments.values()) < 3 * sum(tensor.numel() for tensor in lora.values())
    assert set(trained_weights(tmp_path)) == set(lora)


def test_the_adapter_starts_at_the_base_model_and_from_the_seed(tiny_model):
    first, second = (copy.deepcopy(tiny_model.modules.transformer) for _ in range(2))
    adapter.add_lora(first, 4, 4.0, QWEN_IMAGE_LORA_TARGETS, seed=5)
    torch.manual_seed(123)  # what the global RNG holds must not matter
    adapter.add_lora(second, 4, 4.0, QWEN_IMAGE_LORA_TARGETS, seed=5)
    one, two = adapter.trainable_state(first), adapter.trainable_state(second)
    assert all(torch.equal(one[name], two[name]) for name in one)
    assert all(not tensor.any() for name, tensor in one.items() if "lora_B" in name)
    assert all(tensor.dtype == torch.float32 and tensor.requires_grad for tensor in one.values())


def test_resumed_lora_run_ends_with_the_adapter_of_the_uninterrupted_run(tiny_model, shapes_cache, tmp_path):
    whole = copy.deepcopy(tiny_model.modules.transformer)
    train(whole, shapes_cache, LORA, QWEN_IMAGE, tmp_path / "whole")
    first = copy.deepcopy(tiny_model.modules.transformer)
    stopped = train(first, shapes_cache, LORA, QWEN_IMAGE, tmp_path / "split", should_stop=lambda step: step == 4)
    assert stopped.step == 4 and not stopped.finished
    second = copy.deepcopy(tiny_model.modules.transformer)
    resumed = train(second, shapes_cache, LORA, QWEN_IMAGE, tmp_path / "split")
    assert resumed.resumed_from == 4 and resumed.finished
    expected, got = adapter.lora_state_dict(whole), adapter.lora_state_dict(second)
    assert all(torch.equal(expected[name], got[name]) for name in expected)


def test_error_raised_if_a_lora_checkpoint_is_resumed_with_another_rank(tiny_model, shapes_cache, tmp_path):
    train(copy.deepcopy(tiny_model.modules.transformer), shapes_cache,
          TrainConfig(**{**LORA.to_dict(), "steps": 1}), QWEN_IMAGE, tmp_path)
    with pytest.raises(checkpoint.CheckpointError, match=r"other settings \(lora_rank\)"):
        train(copy.deepcopy(tiny_model.modules.transformer), shapes_cache,
              TrainConfig(**{**LORA.to_dict(), "steps": 2, "lora_rank": 8}), QWEN_IMAGE, tmp_path)


def lora_after(tiny_model, shapes_cache, folder, **changes) -> dict[str, torch.Tensor]:
    model = copy.deepcopy(tiny_model.modules.transformer)
    train(model, shapes_cache, TrainConfig(**{**LORA.to_dict(), "steps": 3, **changes}), QWEN_IMAGE, folder)
    return adapter.lora_state_dict(model)


def test_accumulated_micro_batches_make_one_step_of_their_mean_gradient(tiny_model, shapes_cache, tmp_path):
    accumulated = lora_after(tiny_model, shapes_cache, tmp_path / "a", batch_size=2, gradient_accumulation=2,
                             max_grad_norm=0.0)
    # The same micro-batches by hand: step s draws micro-batches 2s and 2s+1; their mean gradient, one Adam step.
    config = TrainConfig(**{**LORA.to_dict(), "steps": 3, "batch_size": 2, "max_grad_norm": 0.0})
    manual = copy.deepcopy(tiny_model.modules.transformer)
    adapter.add_lora(manual, config.lora_rank, config.lora_alpha, config.lora_targets, config.seed)
    optimizer = torch.optim.AdamW(adapter.trainable_state(manual).values(), lr=config.learning_rate, weight_decay=0.0)
    source = SingleCache(shapes_cache)
    for step in range(3):
        for micro in (2 * step, 2 * step + 1):
            part, indices = source.pick(config, micro)
            generator = step_generator(config, micro)
            latents = part.latents[indices]
            noise = torch.randn(latents.shape, generator=generator)
            sigmas, weights = sample_noise_levels(config, QWEN_IMAGE, image_seq_len(latents), 2, generator)
            torch.rand(2, generator=generator)  # the caption-dropout draw (dropout is 0 here)
            embeds, mask = part.text_batch(indices)
            (flow_matching_loss(manual, latents, noise, sigmas, embeds, mask, weights) / 2).backward()
        optimizer.step()
        optimizer.zero_grad()
    expected = adapter.lora_state_dict(manual)
    for name in expected:
        torch.testing.assert_close(accumulated[name], expected[name], rtol=1e-4, atol=1e-6)


def test_gradient_checkpointing_learns_the_same_adapter(tiny_model, shapes_cache, tmp_path):
    plain = lora_after(tiny_model, shapes_cache, tmp_path / "plain")
    checkpointed = lora_after(tiny_model, shapes_cache, tmp_path / "checkpointed", gradient_checkpointing=True)
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-6)


def test_fp8_storage_keeps_the_base_in_fp8_and_the_adapter_in_full_precision(tiny_model, shapes_cache, tmp_path):
    model = copy.deepcopy(tiny_model.modules.transformer)
    adapter.add_lora(model, LORA.lora_rank, LORA.lora_alpha, LORA.lora_targets, LORA.seed)
    # On a GPU the compute dtype is bfloat16; float32 lets the CPU run the same mechanism.
    adapter.store_base_in_fp8(model, torch.float32)
    to_q = model.transformer_blocks[0].attn.to_q
    assert to_q.base_layer.weight.dtype == torch.float8_e4m3fn
    result = train(model, shapes_cache, TrainConfig(**{**LORA.to_dict(), "steps": 2}), QWEN_IMAGE, tmp_path)
    assert result.finished and to_q.base_layer.weight.dtype == torch.float8_e4m3fn
    assert to_q.lora_A["default"].weight.dtype == torch.float32 and to_q.lora_B["default"].weight.abs().sum() > 0
