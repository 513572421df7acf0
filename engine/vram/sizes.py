"""How big a model's components are, read from safetensors headers (nothing loaded), or nominal figures when
the files are not on disk yet.

A component with repeated blocks ("transformer_blocks.N.", "model.layers.N.", "visual.blocks.N.") is counted as
its blocks (how many, and the largest, which sizes prefetch buffers) plus the rest (embeddings, norms, heads).
The VAE is planned as one piece. The architecture facts the activation estimate needs (widths, patch, VAE
channels, prompt length) come from the components' config.json where present.

Every nominal figure lives in NOMINAL below, once; REFERENCE.md's "Sizes for planning" is their source.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from pathlib import Path

from engine.presets import Family, Preset, Role
from engine.weights import DTYPE_BYTES, read_header

# Weight roles a plan places; the tokenizer and scheduler have no weights.
WEIGHT_ROLES = (Role.TEXT_ENCODER, Role.TRANSFORMER, Role.VAE)
# The safetensors file stem of each weight role, as the hub repos name them.
WEIGHT_STEMS = {Role.TRANSFORMER: "diffusion_pytorch_model", Role.VAE: "diffusion_pytorch_model",
                Role.TEXT_ENCODER: "model"}
UNSPLIT_ROLES = frozenset({Role.VAE})
# Names of the lists that hold repeated blocks in diffusers and transformers models.
BLOCK_LISTS = frozenset({"transformer_blocks", "single_transformer_blocks", "blocks", "layers"})


@dataclass(frozen=True)
class ComponentSize:
    role: Role
    params: int
    block_sizes: tuple[int, ...]  # parameters of each block, largest stack first (the order residency fills)
    rest_params: int  # parameters outside the blocks
    file_bytes_per_param: float  # as stored on disk (2.0 for bf16 files), sizes the staging of disk reads
    measured: bool  # read from headers (True) or nominal (False)

    def __post_init__(self) -> None:
        if self.params <= 0:
            raise ValueError(f"ComponentSize.params must be positive for the {self.role.value}, got {self.params}")
        if self.rest_params < 0 or any(size <= 0 for size in self.block_sizes):
            raise ValueError("ComponentSize.rest_params must not be negative and every block size must be positive")
        if self.rest_params + sum(self.block_sizes) != self.params:
            raise ValueError(f"ComponentSize: {len(self.block_sizes)} blocks of {sum(self.block_sizes)} parameters "
                             f"plus {self.rest_params} others do not make {self.params}")

    @property
    def blocks(self) -> int:
        return len(self.block_sizes)

    @property
    def block_params(self) -> int:
        """Parameters of the largest block."""
        return max(self.block_sizes, default=0)


@dataclass(frozen=True)
class Architecture:
    """Facts the activation estimate needs."""

    title: str
    width: int  # transformer hidden width
    patch: int  # transformer patch side, in latent pixels
    vae_scale: int  # pixels per latent pixel
    vae_temporal: int  # frames per latent frame (1 for image models)
    vae_width: int  # VAE decoder channels at full resolution
    text_width: int
    text_vocab: int  # rows of the logits the text encoder computes (0 for encoder-only models)
    text_layers: int  # hidden states kept when the pipeline asks for all of them
    text_tokens: int  # the longest prompt the encoder sees, template included
    cfg_in_batch: bool  # guidance runs conditional and unconditional passes as one batch

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if item.type == "int" and (not isinstance(value, int) or value < (0 if item.name == "text_vocab" else 1)):
                raise ValueError(f"Architecture.{item.name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class ModelSizes:
    architecture: Architecture
    components: tuple[ComponentSize, ...]

    def __post_init__(self) -> None:
        roles = [size.role for size in self.components]
        if sorted(roles) != sorted(WEIGHT_ROLES):
            raise ValueError(f"ModelSizes needs one size for each of {[r.value for r in WEIGHT_ROLES]}, got "
                             f"{[r.value for r in roles]}")
        object.__setattr__(self, "components", tuple(sorted(self.components, key=lambda c: WEIGHT_ROLES.index(c.role))))

    def component(self, role: Role) -> ComponentSize:
        return next(size for size in self.components if size.role is role)

    @property
    def measured(self) -> bool:
        return all(size.measured for size in self.components)


def _nominal(role: Role, rest_params: float, *stacks: tuple[int, float]) -> ComponentSize:
    """A component of `rest_params` plus stacks of (count, parameters per block), largest stack first."""
    block_sizes = tuple(int(params) for count, params in stacks for _ in range(count))
    return ComponentSize(role, int(rest_params) + sum(block_sizes), block_sizes, int(rest_params), 2.0,
                         measured=False)


# Nominal sizes of the official bf16 checkpoints (REFERENCE.md, "Sizes for planning"). The text encoders count
# their vision tower (Qwen2.5-VL) or second encoder (FLUX's CLIP-L) as blocks of the same component.
NOMINAL: dict[str, ModelSizes] = {
    "qwen_image": ModelSizes(
        Architecture("Qwen-Image", width=3072, patch=2, vae_scale=8, vae_temporal=1, vae_width=96, text_width=3584,
                     text_vocab=152064, text_layers=28, text_tokens=1024 + 34, cfg_in_batch=False),
        (_nominal(Role.TRANSFORMER, 40.5e6, (60, 339.8e6)),
         # 28 decoder layers and 32 vision blocks; embeddings, LM head and the vision merger are the rest.
         _nominal(Role.TEXT_ENCODER, 1.136e9, (28, 233.1e6), (32, 19.7e6)),
         _nominal(Role.VAE, 0.127e9))),
    "flux1_dev": ModelSizes(
        Architecture("FLUX.1-dev", width=3072, patch=2, vae_scale=8, vae_temporal=1, vae_width=128, text_width=4096,
                     text_vocab=0, text_layers=24, text_tokens=512, cfg_in_batch=False),
        # 19 double-stream blocks and 38 single-stream blocks.
        (_nominal(Role.TRANSFORMER, 63e6, (19, 339.8e6), (38, 141.6e6)),
         # T5-XXL's 24 blocks and CLIP-L's 12 layers.
         _nominal(Role.TEXT_ENCODER, 170e6, (24, 193e6), (12, 7.1e6)),
         _nominal(Role.VAE, 0.084e9))),
    "wan21_t2v_14b": ModelSizes(
        Architecture("Wan2.1-T2V-14B", width=5120, patch=2, vae_scale=8, vae_temporal=4, vae_width=96,
                     text_width=4096, text_vocab=0, text_layers=24, text_tokens=512, cfg_in_batch=False),
        (_nominal(Role.TRANSFORMER, 230e6, (40, 351.4e6)),
         _nominal(Role.TEXT_ENCODER, 1.05e9, (24, 193e6)),
         _nominal(Role.VAE, 0.127e9))),
}

FAMILY_NOMINAL: dict[Family, str] = {Family.QWEN_IMAGE: "qwen_image"}

# Architecture fields read from a component's config.json: field -> (role, how to read it).
_CONFIG_FIELDS = {
    "width": (Role.TRANSFORMER, lambda c: c["num_attention_heads"] * c["attention_head_dim"]),
    "patch": (Role.TRANSFORMER, lambda c: c["patch_size"]),
    "vae_width": (Role.VAE, lambda c: c["base_dim"]),
    "text_width": (Role.TEXT_ENCODER, lambda c: c.get("text_config", c)["hidden_size"]),
    "text_vocab": (Role.TEXT_ENCODER, lambda c: c.get("text_config", c)["vocab_size"]),
    "text_layers": (Role.TEXT_ENCODER, lambda c: c.get("text_config", c)["num_hidden_layers"]),
}


def block_key(name: str) -> tuple[str, int] | None:
    """("model.layers", 3) for "model.layers.3.mlp.up_proj.weight"; None outside the blocks (outermost list wins)."""
    parts = name.split(".")
    for index, part in enumerate(parts[:-2]):
        if part in BLOCK_LISTS and parts[index + 1].isdigit():
            return ".".join(parts[:index + 1]), int(parts[index + 1])
    return None


def size_from_files(role: Role, files: list[Path]) -> ComponentSize:
    """A component's size from its safetensors headers: blocks found by their name prefix."""
    block_params: dict[tuple[str, int], int] = {}
    total = rest = file_bytes = 0
    for path in files:
        for tensor in read_header(path).tensors:
            count = tensor.nbytes // DTYPE_BYTES[tensor.dtype] if tensor.dtype in DTYPE_BYTES else tensor.nbytes
            total += count
            file_bytes += tensor.nbytes
            key = None if role in UNSPLIT_ROLES else block_key(tensor.name)
            if key is not None:
                block_params[key] = block_params.get(key, 0) + count
            else:
                rest += count
    if total == 0:
        raise ValueError(f"no tensors in the {role.value} files {[str(path) for path in files]}")
    stacks: dict[str, list[tuple[int, int]]] = {}
    for (stack, index), count in block_params.items():
        stacks.setdefault(stack, []).append((index, count))
    ordered = sorted(stacks.values(), key=lambda blocks: -sum(count for _, count in blocks))
    block_sizes = tuple(count for blocks in ordered for _, count in sorted(blocks))
    return ComponentSize(role, total, block_sizes, rest, file_bytes / total, measured=True)


def sizes_for_folders(family: Family, folders: dict[Role, tuple[Path | None, Path | None]]) -> ModelSizes:
    """Sizes from each role's (weights folder, config folder); a role whose folder is None gets nominal figures."""
    from engine.loading import weight_files

    nominal = NOMINAL[FAMILY_NOMINAL[family]]
    components = []
    configs: dict[Role, dict] = {}
    for role in WEIGHT_ROLES:
        weights, config_folder = folders.get(role, (None, None))
        files = weight_files(weights, WEIGHT_STEMS[role]) if weights is not None else []
        components.append(size_from_files(role, files) if files else nominal.component(role))
        config_path = config_folder / "config.json" if config_folder is not None else None
        if config_path is not None and config_path.is_file():
            configs[role] = json.loads(config_path.read_text(encoding="utf-8"))
    architecture = nominal.architecture
    for name, (role, read) in _CONFIG_FIELDS.items():
        if role in configs:
            try:
                architecture = replace(architecture, **{name: int(read(configs[role]))})
            except (KeyError, TypeError, ValueError):
                pass  # a config without the field keeps the nominal figure, which only sizes an estimate
    return ModelSizes(architecture, tuple(components))


def preset_sizes(preset: Preset, models_dir: Path) -> ModelSizes:
    """Sizes of a preset's components: headers of the files on disk, nominal figures for what is missing."""
    from engine.sources import component_status

    folders = {}
    for status in component_status(preset, models_dir):
        if status.role in WEIGHT_ROLES and status.present:
            folders[status.role] = (status.expected_at, status.expected_at)
    sizes = sizes_for_folders(preset.family, folders)
    return replace(sizes, architecture=replace(sizes.architecture, title=preset.title))
