"""Build a model family's modules from files on disk: diffusers networks, the transformers text encoder and
tokenizer, the scheduler config. Safetensors only; a pickle file is never opened.

The diffusers networks are built on the meta device (accelerate's init_empty_weights keeps only buffers
real) and their parameters are then assigned shard by shard straight from the memory-mapped files, so at no
moment do two copies of the weights exist. The same path serves a repo whose config.json sits beside the
weights and a weight-only repo that borrows its config (Distill-Full).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine.errors import WeightsError
from engine.presets import Role
from engine.schedulers.flow_match import FlowMatchConfig
from engine.sources import ResolvedComponent
from engine.weights import read_header

logger = logging.getLogger(__name__)

# The prompt template's prefix, which Qwen's tokenizer makes into this many tokens (REFERENCE.md).
QWEN_PROMPT_TEMPLATE = (
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, "
    "spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n"
    "<|im_start|>assistant\n"
)
QWEN_PROMPT_DROP = 34


@dataclass
class QwenImageModules:
    """The loaded parts of a Qwen-Image model. Shared by every run; runs never write to it."""

    transformer: Any  # diffusers QwenImageTransformer2DModel
    vae: Any  # diffusers AutoencoderKLQwenImage
    text_encoder: Any  # transformers Qwen2_5_VLForConditionalGeneration
    tokenizer: Any  # transformers Qwen2Tokenizer
    schedule: FlowMatchConfig
    device: torch.device
    dtype: torch.dtype
    text_encoder_device: torch.device | None = None  # where the text encoder computes when not on `device`


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 where it is fast (CUDA); float32 on the CPU, where bf16 matmuls are slow and parity needs fp32."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def weight_files(folder: Path, stem: str) -> list[Path]:
    """The safetensors files of a component: those its index names, or the single file."""
    index = folder / f"{stem}.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        return [folder / name for name in sorted(set(weight_map.values()))]
    single = folder / f"{stem}.safetensors"
    if single.is_file():
        return [single]
    return sorted(folder.glob(f"{stem}*.safetensors"))


def build_diffusers_module(model_class: type, component: ResolvedComponent) -> tuple[torch.nn.Module, list[Path]]:
    """A diffusers network built from its config on the meta device (buffers real), and its weight files,
    every header checked."""
    from accelerate import init_empty_weights

    config_path = component.config_folder / "config.json"
    files = weight_files(component.folder, "diffusion_pytorch_model")
    if not files:
        raise WeightsError(f"No diffusion_pytorch_model*.safetensors in {component.folder}.")
    for path in files:
        read_header(path)  # a truncated shard fails here, with its name, before anything is built
    try:
        config = model_class.load_config(str(component.config_folder))
    except Exception as error:  # diffusers raises several types for a bad config; all mean the same to a user
        raise WeightsError(f"Cannot read {config_path}: {error}") from None
    with init_empty_weights():
        model = model_class.from_config(config)
    return model, files


def load_diffusers_module(model_class: type, component: ResolvedComponent, dtype: torch.dtype,
                          device: torch.device) -> torch.nn.Module:
    """Build a diffusers network from its config and assign its weights from safetensors shards."""
    from safetensors import safe_open

    model, files = build_diffusers_module(model_class, component)
    expected = set(model.state_dict().keys())
    seen: set[str] = set()
    unexpected: list[str] = []
    for path in files:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            shard = {}
            for key in handle.keys():
                if key not in expected:
                    unexpected.append(key)
                    continue
                # A fresh tensor from torch's allocator (64-byte aligned), as engine.vram's loader makes: CPU matmul
                # kernels round differently for differently aligned weights, and the same files must give the
                # same pixels whichever loader read them.
                tensor = handle.get_tensor(key)
                shard[key] = torch.empty(tensor.shape, dtype=dtype, device=device).copy_(tensor)
        _assign(model, shard, path)
        seen.update(shard)
        del shard
    check_fit(model, component, sorted(expected - seen), sorted(unexpected))
    # Buffers made in __init__ (RoPE tables) were built on the CPU in float32; move them with the model.
    return model.to(device).eval().requires_grad_(False)


def check_fit(model: torch.nn.Module, component: ResolvedComponent, missing: list[str],
              unexpected: list[str]) -> None:
    """WeightsError naming how many tensors the files lack and have too many, with the first of each."""
    if missing or unexpected:
        problems = [f"{len(names)} {kind} (first: {names[0]})"
                    for kind, names in (("missing", missing), ("unexpected", unexpected)) if names]
        raise WeightsError(
            f"The weights in {component.folder} do not fit {type(model).__name__} built from "
            f"{component.config_folder / 'config.json'}: {' and '.join(problems)} tensors.",
            "The config and the weights come from different models; download the component again.")


def _assign(model: torch.nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> None:
    try:
        model.load_state_dict(tensors, strict=False, assign=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[-1].strip()
        raise WeightsError(f"{path} does not fit the model's config: {first}",
                           "The config and the weights come from different models; download them again.") from None


def load_text_encoder(component: ResolvedComponent, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
    from transformers import Qwen2_5_VLForConditionalGeneration
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # our callers show their own progress; keep stderr clean

    for path in weight_files(component.folder, "model"):
        read_header(path)
    try:
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            str(component.folder), dtype=dtype, use_safetensors=True, local_files_only=True)
    except (OSError, ValueError, RuntimeError) as error:
        raise WeightsError(f"Cannot load the text encoder from {component.folder}: {_first_line(error)}") from None
    return model.to(device).eval().requires_grad_(False)


def build_text_encoder(component: ResolvedComponent, dtype: torch.dtype) -> tuple[torch.nn.Module, dict[str, str]]:
    """The text encoder built from its config on the meta device (buffers real), and for each of its state-dict
    names the tensor name in the checkpoint (transformers renames some on loading)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.core_model_loading import revert_weight_conversion

    for path in weight_files(component.folder, "model"):
        read_header(path)
    try:
        config = AutoConfig.from_pretrained(str(component.config_folder), local_files_only=True)
    except (OSError, ValueError) as error:
        raise WeightsError(f"Cannot read the text encoder's config in {component.config_folder}: "
                           f"{_first_line(error)}") from None
    with init_empty_weights():
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype)
    state = model.state_dict()
    names = {id(tensor): name for name, tensor in state.items()}
    # Reverting the loading conversion on the state dict's own (meta) tensors maps each to its checkpoint name.
    checkpoint = revert_weight_conversion(model, dict(state))
    return model.eval(), {names[id(tensor)]: key for key, tensor in checkpoint.items()}


def load_tokenizer(component: ResolvedComponent) -> Any:
    from transformers import Qwen2Tokenizer

    try:
        return Qwen2Tokenizer.from_pretrained(str(component.folder), local_files_only=True)
    except (OSError, ValueError) as error:
        raise WeightsError(f"Cannot load the tokenizer from {component.folder}: {_first_line(error)}") from None


def check_tokenizer_fits(tokenizer: Any, text_encoder: torch.nn.Module, tokenizer_folder: Path,
                         encoder_folder: Path) -> None:
    """A tokenizer from another model gives ids past the embedding or a template of the wrong length."""
    rows = text_encoder.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        raise WeightsError(
            f"The tokenizer in {tokenizer_folder} does not fit the text encoder in {encoder_folder}: "
            f"it has {len(tokenizer)} tokens but the encoder's embedding has {rows} rows.",
            "Use the tokenizer folder of the same repo as the text encoder.")
    prefix = QWEN_PROMPT_TEMPLATE.split("{}")[0]
    prefix_length = len(tokenizer(prefix).input_ids)
    if prefix_length != QWEN_PROMPT_DROP:
        raise WeightsError(
            f"The tokenizer in {tokenizer_folder} does not fit the text encoder in {encoder_folder}: "
            f"it makes {prefix_length} tokens of the prompt template's prefix where Qwen's makes {QWEN_PROMPT_DROP}.",
            "Use the tokenizer folder of the same repo as the text encoder.")


def load_qwen_image(components: dict[Role, ResolvedComponent], device: torch.device | str | None = None,
                    dtype: torch.dtype | None = None) -> QwenImageModules:
    """Load every Qwen-Image component and check they belong together."""
    from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel

    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or default_dtype(device)
    tokenizer = load_tokenizer(components[Role.TOKENIZER])
    text_encoder = load_text_encoder(components[Role.TEXT_ENCODER], dtype, device)
    transformer = load_diffusers_module(QwenImageTransformer2DModel, components[Role.TRANSFORMER], dtype, device)
    vae = load_diffusers_module(AutoencoderKLQwenImage, components[Role.VAE], dtype, device)
    check_qwen_image_fits(components, tokenizer, text_encoder, transformer, vae)
    return QwenImageModules(transformer=transformer, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                            schedule=load_schedule(components), device=device, dtype=dtype)


def load_schedule(components: dict[Role, ResolvedComponent]) -> FlowMatchConfig:
    return FlowMatchConfig.from_file(components[Role.SCHEDULER].config_folder / "scheduler_config.json")


def check_qwen_image_fits(components: dict[Role, ResolvedComponent], tokenizer: Any, text_encoder: torch.nn.Module,
                          transformer: torch.nn.Module, vae: torch.nn.Module) -> None:
    """The components belong together: tokenizer and text encoder, text width, latent channels. Needs only the
    modules' configs and shapes, so it runs on modules still on the meta device."""
    check_tokenizer_fits(tokenizer, text_encoder, components[Role.TOKENIZER].folder,
                         components[Role.TEXT_ENCODER].folder)
    text_width = text_encoder.config.get_text_config().hidden_size
    if transformer.config.joint_attention_dim != text_width:
        raise WeightsError(
            f"The transformer expects text features of width {transformer.config.joint_attention_dim} but the "
            f"text encoder gives {text_width}.", "The components come from different models.")
    if transformer.config.in_channels != vae.config.z_dim * 4:
        raise WeightsError(
            f"The transformer takes {transformer.config.in_channels} input channels but the VAE's latents pack "
            f"into {vae.config.z_dim * 4}.", "The components come from different models.")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
