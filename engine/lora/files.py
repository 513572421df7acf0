"""LoRA files on disk: our writer, a header-only summary of any LoRA file, and reading a file's tensors.

Our files use diffusers' key names (`transformer.<module>.lora_A.weight` / `.lora_B.weight`) with nothing
between `lora_A` and `weight`: diffusers' load_lora_weights and ComfyUI both load them. DiffSynth's trainer
keeps PEFT's adapter name (`.lora_A.default.weight`), which neither loads, a top complaint of its users.
There are no `.alpha` tensors: alpha/rank is multiplied into lora_B instead, because diffusers without its own
metadata and ComfyUI without `.alpha` keys both apply a LoRA with alpha = rank (scale 1); the metadata says so.
Safetensors only: a pickle (.ckpt, .pt, .bin) can run code when opened.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.errors import LoraError, WeightsError
from engine.lora.keys import OUR_FORMAT_TAG, LoraFormat, Part, detect_format, split_key
from engine.weights import read_header

logger = logging.getLogger(__name__)

# Metadata keys save_lora writes itself; `extra` may not replace them.
RESERVED_METADATA = ("format", "base_model", "rank", "alpha", "trigger_words", "steps", "alpha_baked")
_DAMAGED_HINT = "Download the LoRA again."


@dataclass(frozen=True)
class LoraInfo:
    """What a LoRA file's header says, read without loading its tensors."""

    path: Path
    base_model: str  # "" when the file does not say
    rank: int | None  # the largest rank of its layers; None when it has none
    alpha: float | None  # as trained; None when the header does not say (kohya keeps it in .alpha tensors)
    trigger_words: tuple[str, ...]
    steps: int  # training steps; 0 when the file does not say
    format: LoraFormat
    tensors: int


def save_lora(path: Path, lora_state: dict[str, torch.Tensor], *, rank: int, alpha: float, base_model: str,
              trigger_words: list[str] | tuple[str, ...] = (), steps: int = 0,
              extra: dict[str, str] | None = None) -> Path:
    """Write a trained LoRA (peft's get_peft_model_state_dict of the transformer) as a file that diffusers and
    ComfyUI load, atomically (a temporary file renamed), and return its path."""
    path = Path(path)
    if not isinstance(rank, int) or isinstance(rank, bool) or rank <= 0:
        raise ValueError(f"rank must be a positive whole number, got {rank!r}")
    scale = float(alpha) / rank
    tensors = {}
    for key, tensor in lora_state.items():
        parts = split_key(key)
        if parts is None or parts.part is Part.ALPHA or parts.underscored:
            raise ValueError(f"{key!r} is not a PEFT LoRA tensor (expected <module>.lora_A/lora_B.weight)")
        suffix = "lora_A" if parts.part is Part.DOWN else "lora_B"
        name = f"transformer.{parts.module}.{suffix}.weight"
        if name in tensors:
            raise ValueError(f"{key!r} names the same tensor as another key ({name}); save one adapter at a time")
        expected_rank = tensor.shape[0] if parts.part is Part.DOWN else tensor.shape[-1]
        if tensor.dim() != 2 or expected_rank != rank:
            raise ValueError(f"{key!r} has shape {list(tensor.shape)}, not a rank-{rank} LoRA matrix")
        tensor = tensor.detach().to("cpu")
        if parts.part is Part.UP and scale != 1.0:
            tensor = (tensor.float() * scale).to(tensor.dtype)  # scaled in float32: one rounding, not two
        tensors[name] = tensor.contiguous()
    for name in tensors:
        twin = name.replace(".lora_A.", ".lora_B.") if ".lora_A." in name else name.replace(".lora_B.", ".lora_A.")
        if twin not in tensors:
            raise ValueError(f"{name} has no matching {twin.rsplit('.', 2)[-2]} tensor")
    if not tensors:
        raise ValueError("the LoRA state is empty: no layer was trained")
    metadata = {"format": OUR_FORMAT_TAG, "base_model": base_model, "rank": str(rank), "alpha": f"{float(alpha):g}",
                "trigger_words": json.dumps(list(trigger_words), ensure_ascii=False), "steps": str(int(steps)),
                "alpha_baked": f"every lora_B holds alpha/rank = {scale:g} already: apply with scale 1 (alpha = rank)"}
    for key, value in (extra or {}).items():
        if key in RESERVED_METADATA:
            raise ValueError(f"extra metadata may not replace {key!r}")
        metadata[key] = str(value)
    return _write_atomically(path, tensors, metadata)


def _write_atomically(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".safetensors.part")
    os.close(handle)
    try:
        save_file(tensors, temporary, metadata=metadata)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    logger.info("LoRA written to %s (%d tensors)", path, len(tensors))
    return path


def read_lora_info(path: Path) -> LoraInfo:
    """A LoRA file's summary from its safetensors header alone (microseconds, whatever the file's size)."""
    header = _header(Path(path))
    metadata = header.metadata
    keys = [tensor.name for tensor in header.tensors]
    ranks = [tensor.shape[0] for tensor in header.tensors
             if (parts := split_key(tensor.name)) is not None and parts.part is Part.DOWN and tensor.shape]
    return LoraInfo(
        path=Path(path),
        base_model=metadata.get("base_model") or metadata.get("ss_base_model_version") or "",
        rank=max(ranks) if ranks else None,
        alpha=_number(metadata.get("alpha") or metadata.get("ss_network_alpha")),
        trigger_words=_trigger_words(metadata.get("trigger_words")),
        steps=int(_number(metadata.get("steps") or metadata.get("ss_steps")) or 0),
        format=detect_format(keys, metadata),
        tensors=len(keys),
    )


def read_lora_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every tensor of a LoRA file (on the CPU) and its metadata; LoraError for a missing or damaged file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    header = _header(path)
    try:
        tensors = load_file(path, device="cpu")
    except (SafetensorError, OSError) as error:
        raise LoraError(f"Not a usable LoRA: cannot read {path} ({error}).", _DAMAGED_HINT) from None
    return tensors, header.metadata


def _header(path: Path):
    if not path.is_file():
        raise LoraError(f"The LoRA file {path} does not exist.", "Check the path, or pick the LoRA again.")
    if path.suffix.lower() != ".safetensors":
        raise LoraError(f"{path.name} is not a .safetensors file; LoRAs are only read from safetensors, because "
                        "pickle files (.ckpt, .pt, .bin) can run code when opened.",
                        "Use the .safetensors version of this LoRA.")
    try:
        return read_header(path)
    except WeightsError as error:
        raise LoraError(f"Not a usable LoRA: {error.message}", _DAMAGED_HINT) from None


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "", "None") else None
    except ValueError:
        return None


def _trigger_words(text: str | None) -> tuple[str, ...]:
    if not text:
        return ()
    try:
        words = json.loads(text)
    except json.JSONDecodeError:
        return (text,)
    return tuple(str(word) for word in words) if isinstance(words, list) else (str(words),)

