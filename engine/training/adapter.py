"""LoRA adapters for training, through peft: inject, list what trains, and take the adapter's weights out.

The adapter is injected with diffusers' ModelMixin.add_adapter (peft's inject_adapter_in_model underneath),
which wraps each targeted nn.Linear in a peft LoRA layer and leaves every base weight frozen. The adapter's
B starts at zero, so the adapted model begins exactly where the base model is.
"""

from __future__ import annotations

import logging

import torch

from engine.errors import SettingsError
from engine.training import seeding

logger = logging.getLogger(__name__)

ADAPTER = "default"  # peft's own default name; get_peft_model_state_dict strips it from the keys


def add_lora(transformer: torch.nn.Module, rank: int, alpha: float, targets: tuple[str, ...], seed: int = 0
             ) -> list[str]:
    """Inject a LoRA adapter of `rank` into every module whose name ends with one of `targets`; only the
    adapter trains. Returns the adapted module names; SettingsError naming the targets when none matches.

    The adapter's A matrices start random: drawn from `seed`, not from whatever the global RNG holds, so a run
    starts the same whatever ran before it in the process (and every process of a distributed run alike).
    """
    from peft import LoraConfig

    names = [name for name, module in transformer.named_modules()
             if isinstance(module, torch.nn.Linear) and any(_matches(name, target) for target in targets)]
    if not names:
        raise SettingsError(f"No module of the transformer matches the LoRA targets {', '.join(targets)}.",
                            "Name modules such as to_q, to_k, to_v, to_out.0 (see the model's named_modules()).")
    transformer.requires_grad_(False)
    try:
        with torch.random.fork_rng(devices=[]):  # peft initialises on the CPU, then moves to the layer's device
            torch.manual_seed(seeding.mix_seed(seed, 4))
            transformer.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets),
                                               init_lora_weights=True), adapter_name=ADAPTER)
    except ValueError as error:  # peft: a target names a module type it cannot adapt
        raise SettingsError(f"Cannot put a LoRA on the targets {', '.join(targets)}: {error}",
                            "Target linear layers only.") from None
    for name, parameter in transformer.named_parameters():
        # peft makes the adapter in the dtype of the layer it wraps; Adam's updates need float32 to register.
        if "lora_" in name:
            parameter.data = parameter.data.float()
            parameter.requires_grad_(True)
    logger.info("LoRA rank %d, alpha %g on %d modules", rank, alpha, len(names))
    return names


def has_lora(transformer: torch.nn.Module) -> bool:
    return bool(getattr(transformer, "_hf_peft_config_loaded", False))


def trainable_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that train, by their names in the module (peft's names, adapter name included)."""
    return {name: parameter for name, parameter in module.named_parameters() if parameter.requires_grad}


def load_trainable_state(module: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy saved trainable parameters back; KeyError naming the first name that does not fit."""
    current = trainable_state(module)
    if set(tensors) != set(current):
        strange = sorted(set(tensors) ^ set(current))
        raise KeyError(f"the saved adapter does not match the model's ({len(strange)} names differ, "
                       f"first: {strange[0]})")
    with torch.no_grad():
        for name, parameter in current.items():
            parameter.copy_(tensors[name])


def lora_state_dict(transformer: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's weights as peft exports them (`<module>.lora_A.weight`, ...), for engine.lora's save_lora."""
    from peft import get_peft_model_state_dict

    return {name: tensor.detach().float().cpu().contiguous()
            for name, tensor in get_peft_model_state_dict(transformer, adapter_name=ADAPTER).items()}


def _matches(name: str, target: str) -> bool:
    # peft's rule for a list of targets: the full name, or its ending after a dot.
    return name == target or name.endswith("." + target)


def supports_fp8_compute(device: torch.device) -> bool:
    """fp8 storage pays on GPUs with fp8 tensor cores (compute capability 8.9 and up: Ada, Hopper, Blackwell)."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def store_base_in_fp8(transformer: torch.nn.Module, compute_dtype: torch.dtype) -> None:
    """Keep the frozen base weights in float8_e4m3fn and cast each layer up to compute_dtype as it runs
    (diffusers' layerwise casting). Call after add_lora: diffusers then skips peft's layers, so the adapter
    stays in full precision; norms and embeddings are skipped too, by the model's own patterns."""
    transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=compute_dtype)
