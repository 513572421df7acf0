"""LoRA key names as the trainers of the field write them, taken apart into (module path, which tensor).

    diffusers / PEFT    transformer.<module>.lora_A.weight, .lora_B.weight (the prefix optional), .alpha optional
    PEFT with adapter   <module>.lora_A.default.weight (DiffSynth's trainer keeps PEFT's adapter name)
    kohya / Musubi      lora_unet_<module, dots as underscores>.lora_down.weight, .lora_up.weight, .alpha
                        (SimpleTuner's lycoris_ and OneTrainer's lora_transformer_ prefixes likewise)
    ComfyUI             diffusion_model.<module>... with either pair of names

Only names here, no tensors: read_lora_info detects a file's format from its header alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

OUR_FORMAT_TAG = "diffusion-studio/lora-v1"  # the "format" metadata of the files save_lora writes
KOHYA_PREFIX = "lora_unet_"
# Trainers that spell module paths with underscores as kohya does: kohya/Musubi, SimpleTuner's LyCORIS, OneTrainer.
UNDERSCORED_PREFIXES = (KOHYA_PREFIX, "lycoris_", "lora_transformer_")
# Prefixes that only say which part of a pipeline the module belongs to, outermost first.
PREFIXES = ("diffusion_model.", "transformer.", "base_model.model.")
_ADAPTER_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<which>[AB])\.(?P<adapter>[A-Za-z0-9_-]+)\.weight$")


class LoraFormat(str, Enum):
    STUDIO = "studio"  # ours: diffusers keys with alpha/rank baked into lora_B
    DIFFUSERS = "diffusers"
    PEFT = "peft"
    PEFT_ADAPTER = "peft-adapter"
    KOHYA = "kohya"
    COMFYUI = "comfyui"
    UNKNOWN = "unknown"


class Part(str, Enum):
    DOWN = "down"  # lora_A / lora_down: (rank, in_features)
    UP = "up"  # lora_B / lora_up: (out_features, rank)
    ALPHA = "alpha"


@dataclass(frozen=True)
class SplitKey:
    module: str  # the module path, prefixes removed; dots as underscores when `underscored`
    part: Part
    underscored: bool  # kohya style: the module path's dots became underscores
    adapter: str | None = None  # PEFT's adapter name left in the key (".default.")


_SUFFIXES = ((".lora_A.weight", Part.DOWN), (".lora_B.weight", Part.UP), (".lora_down.weight", Part.DOWN),
             (".lora_up.weight", Part.UP), (".alpha", Part.ALPHA))


def split_key(key: str) -> SplitKey | None:
    """Module path and tensor role of one LoRA key; None for a key that is not a plain LoRA tensor (LoHa, LoKr,
    DoRA scales, full weight diffs...)."""
    name = strip_prefixes(key)
    adapter = None
    for suffix, part in _SUFFIXES:
        if name.endswith(suffix):
            module = name[:-len(suffix)]
            break
    else:
        match = _ADAPTER_KEY.match(name)
        if match is None:
            return None
        module, part, adapter = match["module"], Part.DOWN if match["which"] == "A" else Part.UP, match["adapter"]
    prefix = next((prefix for prefix in UNDERSCORED_PREFIXES if module.startswith(prefix)), None)
    if prefix is not None:
        module = module[len(prefix):]
    return SplitKey(module, part, prefix is not None, adapter) if module else None


def strip_prefixes(key: str) -> str:
    stripped = None
    while stripped != key:
        stripped = key
        for prefix in PREFIXES:
            key = key.removeprefix(prefix)
    return key


def detect_format(keys: list[str], metadata: dict[str, str]) -> LoraFormat:
    """The format a file's keys are written in (the first rule that fits, most specific first)."""
    if metadata.get("format") == OUR_FORMAT_TAG:
        return LoraFormat.STUDIO
    split = [split_key(key) for key in keys]
    if not keys or any(parts is None for parts in split):
        return LoraFormat.UNKNOWN
    if any(key.startswith("diffusion_model.") for key in keys):
        return LoraFormat.COMFYUI
    if any(parts.underscored for parts in split):
        return LoraFormat.KOHYA
    if any(parts.adapter is not None for parts in split):
        return LoraFormat.PEFT_ADAPTER
    if any(key.startswith("transformer.") for key in keys):
        return LoraFormat.DIFFUSERS
    return LoraFormat.PEFT
