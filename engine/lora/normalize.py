"""Any LoRA file's tensors -> {module path in our diffusers model: LoraDelta(down, up, alpha)}.

The reading follows diffusers' _convert_non_diffusers_qwen_lora_to_diffusers in what it accepts, with one
difference: kohya's underscored module paths ("transformer_blocks_0_attn_to_q") are resolved against the
model's real module names instead of a list of protected word pairs, so every layer of any architecture
resolves, and a name that could mean two layers is refused rather than guessed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.errors import LoraError
from engine.lora.foreign import foreign_architecture
from engine.lora.keys import Part, split_key


@dataclass(frozen=True)
class LoraDelta:
    """One layer's low-rank update: the layer's weight changes by scale * up @ down."""

    down: torch.Tensor  # (rank, in_features), PEFT's lora_A
    up: torch.Tensor  # (out_features, rank), PEFT's lora_B
    alpha: float | None  # None: the file has no alpha, so the update is applied as stored

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    @property
    def scale(self) -> float:
        """alpha / rank when the file gives alpha (as kohya, PEFT and diffusers apply it), else 1."""
        return self.alpha / self.rank if self.alpha is not None else 1.0

    def delta(self) -> torch.Tensor:
        """scale * up @ down in float32: the change to the layer's weight at LoRA weight 1."""
        return self.scale * (self.up.float() @ self.down.float())


def linear_layers(module: torch.nn.Module) -> dict[str, tuple[int, int]]:
    """Every nn.Linear of a network: its path -> (in_features, out_features)."""
    return {name: (child.in_features, child.out_features) for name, child in module.named_modules()
            if isinstance(child, torch.nn.Linear)}


def normalize(tensors: dict[str, torch.Tensor], layers: dict[str, tuple[int, int]], *, name: str,
              architecture: str) -> dict[str, LoraDelta]:
    """The LoRA's update for each layer of `layers` it targets. LoraError when a key does not fit (naming the
    model it was made for when recognisable), a layer's matrices do not fit its size, or a pair is incomplete."""
    if not tensors:
        raise LoraError(f"{name} holds no tensors: it is not a LoRA.", "Download the LoRA again.")
    underscored = _underscored_names(layers)
    parts: dict[str, dict[Part, torch.Tensor]] = {}
    unmatched = []
    for key, tensor in tensors.items():
        split = split_key(key)
        module = None
        if split is not None:
            module = underscored.get(split.module) if split.underscored else split.module
        if module is None or module not in layers:
            unmatched.append(key)
            continue
        entry = parts.setdefault(module, {})
        if split.part in entry:
            raise LoraError(f"{name} holds two {split.part.value} tensors for the layer {module}.",
                            "Save the LoRA with one adapter only.")
        entry[split.part] = tensor
    if unmatched:
        _refuse(tensors, unmatched, name, architecture)
    return {module: _delta(module, entry, layers[module], name) for module, entry in sorted(parts.items())}


def _refuse(tensors: dict[str, torch.Tensor], unmatched: list[str], name: str, architecture: str) -> None:
    hint = f"Use a LoRA made for {architecture}."
    family = foreign_architecture(list(tensors))
    if family is not None:
        raise LoraError(f"{name} looks like a LoRA for {family}, not {architecture}.", hint)
    matched = len(tensors) - len(unmatched)
    raise LoraError(f"{name} does not fit {architecture}: {matched} of {len(tensors)} keys match its layers; "
                    f"{sorted(unmatched)[0]!r} does not.", hint)


def _delta(module: str, entry: dict[Part, torch.Tensor], size: tuple[int, int], name: str) -> LoraDelta:
    missing = [part for part in (Part.DOWN, Part.UP) if part not in entry]
    if missing:
        raise LoraError(f"{name} is incomplete: the layer {module} has no {missing[0].value} matrix.",
                        "Download the LoRA again.")
    down, up = entry[Part.DOWN], entry[Part.UP]
    # kohya stores 1x1 convolutions as (out, in, 1, 1) for linear layers too.
    down = down.flatten(1) if down.dim() == 4 and down.shape[2:] == (1, 1) else down
    up = up.flatten(1) if up.dim() == 4 and up.shape[2:] == (1, 1) else up
    in_features, out_features = size
    if down.dim() != 2 or up.dim() != 2 or down.shape[1] != in_features or up.shape[0] != out_features \
            or up.shape[1] != down.shape[0]:
        raise LoraError(f"{name} does not fit the layer {module}: it takes {in_features} inputs and gives "
                        f"{out_features} outputs, the LoRA's matrices are {list(down.shape)} (down) and "
                        f"{list(up.shape)} (up).", "The LoRA was made for another model or another size of it.")
    alpha = entry.get(Part.ALPHA)
    if alpha is not None and alpha.numel() != 1:
        raise LoraError(f"{name} has an alpha of shape {list(alpha.shape)} for the layer {module}; "
                        "alpha is one number.", "Download the LoRA again.")
    return LoraDelta(down=down, up=up, alpha=float(alpha.item()) if alpha is not None else None)


def _underscored_names(layers: dict[str, tuple[int, int]]) -> dict[str, str | None]:
    """kohya's spelling of each layer path -> the path; None where two paths share a spelling (ambiguous)."""
    names: dict[str, str | None] = {}
    for path in layers:
        spelled = path.replace(".", "_")
        names[spelled] = None if spelled in names else path
    return names
