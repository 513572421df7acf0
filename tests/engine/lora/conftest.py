"""Known low-rank updates for the tiny Qwen-Image transformer, written in each LoRA format met in the wild."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from engine.lora.stack import LoraStack

# A spread of layer kinds: attention (image and text streams), output projections, MLP, modulation, embedders.
TARGETS = ("transformer_blocks.0.attn.to_q", "transformer_blocks.0.attn.add_k_proj",
           "transformer_blocks.0.attn.to_out.0", "transformer_blocks.1.attn.to_add_out",
           "transformer_blocks.1.img_mlp.net.2", "transformer_blocks.1.txt_mod.1", "img_in", "proj_out")


@dataclass(frozen=True)
class KnownLora:
    """down/up per layer and one alpha (None: the file carries none)."""

    down: dict[str, torch.Tensor]
    up: dict[str, torch.Tensor]
    alpha: float | None
    rank: int

    @property
    def scale(self) -> float:
        return self.alpha / self.rank if self.alpha is not None else 1.0

    def delta(self, layer: str) -> torch.Tensor:
        """The change to the layer's weight at LoRA weight 1, by definition: (alpha / rank) * up @ down."""
        return self.scale * (self.up[layer] @ self.down[layer])


def known_lora(transformer: torch.nn.Module, *, seed: int, rank: int = 4, alpha: float | None = 2.0,
               targets: tuple[str, ...] = TARGETS) -> KnownLora:
    generator = torch.Generator().manual_seed(seed)
    down, up = {}, {}
    for layer in targets:
        linear = transformer.get_submodule(layer)
        down[layer] = torch.randn(rank, linear.in_features, generator=generator) * 0.3
        up[layer] = torch.randn(linear.out_features, rank, generator=generator) * 0.3
    return KnownLora(down, up, alpha, rank)


def write_format(lora: KnownLora, form: str, path: Path, dtype: torch.dtype = torch.float32) -> Path:
    """The same LoRA as each trainer writes it (see engine/lora/keys.py for the key grammar)."""
    tensors = {}
    for layer in lora.down:
        down, up = lora.down[layer].to(dtype), lora.up[layer].to(dtype)
        kohya = "lora_unet_" + layer.replace(".", "_")
        names = {
            "diffusers": (f"transformer.{layer}.lora_A.weight", f"transformer.{layer}.lora_B.weight",
                          f"transformer.{layer}.alpha"),
            "peft": (f"{layer}.lora_A.weight", f"{layer}.lora_B.weight", f"{layer}.alpha"),
            "peft-adapter": (f"{layer}.lora_A.default.weight", f"{layer}.lora_B.default.weight", f"{layer}.alpha"),
            "kohya": (f"{kohya}.lora_down.weight", f"{kohya}.lora_up.weight", f"{kohya}.alpha"),
            "comfyui": (f"diffusion_model.{layer}.lora_down.weight", f"diffusion_model.{layer}.lora_up.weight",
                        f"diffusion_model.{layer}.alpha"),
            "comfyui-ab": (f"diffusion_model.{layer}.lora_A.weight", f"diffusion_model.{layer}.lora_B.weight",
                           f"diffusion_model.{layer}.alpha"),
        }[form]
        tensors[names[0]], tensors[names[1]] = down.contiguous(), up.contiguous()
        if lora.alpha is not None:
            tensors[names[2]] = torch.tensor(lora.alpha, dtype=dtype)
    save_file(tensors, str(path))
    return path


@pytest.fixture(scope="module")
def transformer(tiny_qwen_dir):
    """A private copy of the tiny transformer (float32, CPU), so hooks never reach the shared tiny_model."""
    from diffusers import QwenImageTransformer2DModel

    return QwenImageTransformer2DModel.from_pretrained(tiny_qwen_dir / "transformer", torch_dtype=torch.float32).eval()


@pytest.fixture()
def stack(transformer):
    """A LoRA stack on the transformer, emptied afterwards; no test may leave a hook behind."""
    lora_stack = LoraStack(transformer)
    yield lora_stack
    lora_stack.clear()
    assert not any(module._forward_hooks for module in transformer.modules())


def transformer_inputs(transformer: torch.nn.Module, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    config = transformer.config
    return dict(hidden_states=torch.randn(1, 16, config.in_channels, generator=generator),
                encoder_hidden_states=torch.randn(1, 5, config.joint_attention_dim, generator=generator),
                encoder_hidden_states_mask=None, timestep=torch.tensor([0.6]), img_shapes=[[(1, 4, 4)]],
                return_dict=False)


def with_peft_lora(transformer: torch.nn.Module, *, rank: int, alpha: float, targets: list[str], seed: int,
                   scale: float) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """A copy of `transformer` with a PEFT LoRA injected as our trainer does (diffusers' add_adapter), its
    matrices random (normal * scale) as after training, and the state peft hands to save_lora."""
    import copy

    from peft import LoraConfig, get_peft_model_state_dict

    network = copy.deepcopy(transformer)
    network.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in network.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
    return network, get_peft_model_state_dict(network)
