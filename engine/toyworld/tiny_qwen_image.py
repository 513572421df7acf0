"""Tiny random Qwen-Image components, written in the exact file layout of the Qwen/Qwen-Image hub repo.

The same loading and pipeline code serves these and the real 58 GB model, so tests (parity with diffusers,
loading, bad-input handling) and the shapes world start from here: a folder with model_index.json,
scheduler/, text_encoder/ (sharded safetensors + index, the hub's flat Qwen2.5-VL config), tokenizer/
(vocab.json + merges.txt of a byte-level BPE trained here with the tokenizers library), transformer/
(sharded + index) and vae/.

The tokenizer must turn the prompt template's prefix into exactly as many tokens as Qwen's does (34), since
the pipeline drops that many hidden states; every word of the template is taught as a single token.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

# Qwen2.5-VL's special tokens, in Qwen's order; they follow the BPE vocabulary as in the real tokenizer.
SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)

# The same pre-tokenizer split as Qwen2Tokenizer, so words and punctuation break exactly where Qwen's do.
QWEN_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# The text-to-image and edit templates, whose words must each be one token (see module docstring).
TEMPLATE_TEXT = (
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, "
    "spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n"
    "<|im_end|>\n<|im_start|>assistant\n"
    "<|im_start|>system\nDescribe the key features of the input image (color, shape, size, texture, objects, "
    "background), then explain how the user's text instruction should alter or modify the image. Generate a new "
    "image that meets the user's requirements while maintaining consistency with the original input where "
    "appropriate.<|im_end|>\n"
)

GENERAL_TEXT = (
    "a red circle in the top left on a blue background. a small green square at the bottom. "
    "a large yellow triangle on the right and a white star in the center on a black background. "
    "orange purple left right top bottom center in on at of with and the a an is are picture image photo "
    "cat dog house tree sky sun moon water city street car person man woman child hello world sign says "
    "0 1 2 3 4 5 6 7 8 9 , . : ; ! ? ' \" ( ) - "
)


@dataclass(frozen=True)
class TinySizes:
    """Dimensions of the tiny components; the defaults run a 64x64 image in milliseconds on a CPU."""

    text_hidden: int = 32
    text_layers: int = 2
    text_heads: int = 4
    text_kv_heads: int = 2
    vocab_size: int = 1024  # BPE merges; the text encoder's embedding has room for the special tokens too
    dit_layers: int = 2
    dit_heads: int = 2
    dit_head_dim: int = 16
    rope_axes: tuple[int, int, int] = (4, 6, 6)  # sums to dit_head_dim, like (16, 56, 56) sums to 128
    vae_base_dim: int = 8
    vae_res_blocks: int = 1
    vae_downsamples: int = 3  # 2x each: Qwen-Image's VAE has 3 (8 pixels per latent position)
    z_dim: int = 16


def train_tokenizer(folder: Path, extra_text: str = "", vocab_size: int = 1024) -> None:
    """Train a byte-level BPE on the templates (+ extra text) and save it as Qwen2Tokenizer files."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Repetition makes every template word frequent enough to be merged into a single token.
    plain_template = TEMPLATE_TEXT
    for token in SPECIAL_TOKENS:
        plain_template = plain_template.replace(token, "\n")
    corpus = [plain_template] * 50 + [GENERAL_TEXT] * 20 + ([extra_text] if extra_text else [])
    tokenizer.train_from_iterator(corpus, trainer=trainer)

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.model.save(str(folder))  # vocab.json + merges.txt, the files Qwen's repo ships
    first_special = tokenizer.get_vocab_size()
    added = {token: first_special + index for index, token in enumerate(SPECIAL_TOKENS)}
    _write_json(folder / "added_tokens.json", added)
    _write_json(folder / "special_tokens_map.json", {
        "eos_token": {"content": "<|im_end|>", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False},
        "pad_token": {"content": "<|endoftext|>", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False},
        "additional_special_tokens": list(SPECIAL_TOKENS[1:]),
    })
    _write_json(folder / "tokenizer_config.json", {
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(index): {"content": token, "lstrip": False, "normalized": False, "rstrip": False,
                         "single_word": False, "special": True}
            for token, index in added.items()
        },
        "additional_special_tokens": list(SPECIAL_TOKENS[1:]),
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 131072,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    })


def _text_encoder_config(sizes: TinySizes, vocab_size: int, token_ids: dict[str, int]) -> dict:
    """A Qwen2.5-VL config in the flat form the hub's text_encoder/config.json uses."""
    half = sizes.text_hidden // sizes.text_heads // 2
    mrope = [half - 2 * (half // 3), half // 3, half // 3]  # sums to head_dim/2, like [16, 24, 24]
    return {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "attention_dropout": 0.0,
        "bos_token_id": token_ids["<|endoftext|>"],
        "eos_token_id": token_ids["<|im_end|>"],
        "hidden_act": "silu",
        "hidden_size": sizes.text_hidden,
        "image_token_id": token_ids["<|image_pad|>"],
        "initializer_range": 0.02,
        "intermediate_size": sizes.text_hidden * 2,
        "max_position_embeddings": 4096,
        "max_window_layers": sizes.text_layers,
        "model_type": "qwen2_5_vl",
        "num_attention_heads": sizes.text_heads,
        "num_hidden_layers": sizes.text_layers,
        "num_key_value_heads": sizes.text_kv_heads,
        "rms_norm_eps": 1e-06,
        "rope_scaling": {"mrope_section": mrope, "rope_type": "default", "type": "default"},
        "rope_theta": 1000000.0,
        "sliding_window": 4096,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "use_cache": True,
        "use_sliding_window": False,
        "video_token_id": token_ids["<|video_pad|>"],
        "vision_config": {
            "depth": 1, "hidden_act": "silu", "hidden_size": 16, "intermediate_size": 32, "num_heads": 2,
            "in_chans": 3, "out_hidden_size": sizes.text_hidden, "patch_size": 14, "spatial_merge_size": 2,
            "spatial_patch_size": 14, "window_size": 112, "fullatt_block_indexes": [0], "tokens_per_second": 2,
            "temporal_patch_size": 2,
        },
        "vision_end_token_id": token_ids["<|vision_end|>"],
        "vision_start_token_id": token_ids["<|vision_start|>"],
        "vision_token_id": token_ids["<|vision_pad|>"],
        "vocab_size": vocab_size,
    }


def write_text_encoder(folder: Path, sizes: TinySizes, tokenizer_folder: Path, seed: int,
                       shard_size: str = "200KB", dtype: torch.dtype = torch.float32) -> None:
    """A seeded random Qwen2.5-VL; `dtype` is what the weights are stored in (the loader converts)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    token_ids = json.loads((tokenizer_folder / "added_tokens.json").read_text())
    # Room for every token id, rounded up like Qwen's 152064-row embedding.
    vocab_size = -(-(max(token_ids.values()) + 1) // 64) * 64
    config_dict = _text_encoder_config(sizes, vocab_size, token_ids)
    config_dict["torch_dtype"] = str(dtype).removeprefix("torch.")
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**config_dict)).eval()
    model.to(dtype).save_pretrained(folder, max_shard_size=shard_size, safe_serialization=True)
    # Keep the hub's flat config rather than the nested form this transformers version writes.
    _write_json(folder / "config.json", config_dict)


def write_transformer(folder: Path, sizes: TinySizes, seed: int, shard_size: str = "100KB",
                      layers: int | None = None, heads: int | None = None, head_dim: int | None = None,
                      rope_axes: tuple[int, int, int] | None = None) -> None:
    from diffusers import QwenImageTransformer2DModel

    torch.manual_seed(seed)
    model = QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=sizes.z_dim * 4,
        out_channels=sizes.z_dim,
        num_layers=layers or sizes.dit_layers,
        attention_head_dim=head_dim or sizes.dit_head_dim,
        num_attention_heads=heads or sizes.dit_heads,
        joint_attention_dim=sizes.text_hidden,
        axes_dims_rope=rope_axes or sizes.rope_axes,
    )
    model.save_pretrained(folder, max_shard_size=shard_size, safe_serialization=True)


def vae_stages(downsamples: int) -> dict:
    """AutoencoderKLQwenImage's stage arguments for `downsamples` 2x stages: Qwen-Image's channel multipliers
    and temporal flags, cut to the stages kept (the first never downsamples in time; an image has one frame)."""
    if downsamples not in (2, 3):
        raise ValueError(f"downsamples: must be 2 (4x) or 3 (8x, Qwen-Image's), got {downsamples}")
    return {"dim_mult": [1, 2, 4, 4][:downsamples + 1], "temperal_downsample": [False, True, True][:downsamples]}


def write_vae(folder: Path, sizes: TinySizes, seed: int) -> None:
    from diffusers import AutoencoderKLQwenImage

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = AutoencoderKLQwenImage(
        base_dim=sizes.vae_base_dim,
        z_dim=sizes.z_dim,
        num_res_blocks=sizes.vae_res_blocks,
        **vae_stages(sizes.vae_downsamples),
        latents_mean=(torch.randn(sizes.z_dim, generator=generator) * 0.5).tolist(),
        latents_std=(1.0 + torch.rand(sizes.z_dim, generator=generator)).tolist(),
    )
    model.save_pretrained(folder, safe_serialization=True)


QWEN_IMAGE_SCHEDULER_CONFIG = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "_diffusers_version": "0.34.0.dev0",
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "invert_sigmas": False,
    "max_image_seq_len": 8192,
    "max_shift": 0.9,
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "shift_terminal": 0.02,
    "stochastic_sampling": False,
    "time_shift_type": "exponential",
    "use_beta_sigmas": False,
    "use_dynamic_shifting": True,
    "use_exponential_sigmas": False,
    "use_karras_sigmas": False,
}

MODEL_INDEX = {
    "_class_name": "QwenImagePipeline",
    "_diffusers_version": "0.34.0.dev0",
    "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    "text_encoder": ["transformers", "Qwen2_5_VLForConditionalGeneration"],
    "tokenizer": ["transformers", "Qwen2Tokenizer"],
    "transformer": ["diffusers", "QwenImageTransformer2DModel"],
    "vae": ["diffusers", "AutoencoderKLQwenImage"],
}


def build_tiny_qwen_image(folder: Path, sizes: TinySizes = TinySizes(), seed: int = 0, tokenizer_text: str = "") -> Path:
    """Write a complete tiny Qwen-Image repo at `folder` and return it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _write_json(folder / "model_index.json", MODEL_INDEX)
    (folder / "scheduler").mkdir(exist_ok=True)
    _write_json(folder / "scheduler" / "scheduler_config.json", QWEN_IMAGE_SCHEDULER_CONFIG)
    train_tokenizer(folder / "tokenizer", tokenizer_text, sizes.vocab_size)
    write_text_encoder(folder / "text_encoder", sizes, folder / "tokenizer", seed)
    write_transformer(folder / "transformer", sizes, seed + 1)
    write_vae(folder / "vae", sizes, seed + 2)
    logger.info("Wrote a tiny Qwen-Image repo to %s", folder)
    return folder


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
