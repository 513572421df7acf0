"""Which other model a LoRA was made for, from the module names in its keys.

A LoRA for another architecture does not fit ours, and "N of M keys match" alone leaves the user guessing
why; naming the model it was made for does not. The markers are module names that only that family's
networks have (original and diffusers names, kohya's underscored and ComfyUI's prefixed spellings alike).
"""

from __future__ import annotations

import re

from engine.lora.keys import KOHYA_PREFIX, strip_prefixes

# (family, pattern over a key with its pipeline prefixes removed), most specific first.
_MARKERS: tuple[tuple[str, re.Pattern], ...] = tuple((family, re.compile(pattern)) for family, pattern in (
    ("FLUX.1", r"(^|[._])(double_blocks|single_blocks|single_transformer_blocks)[._]\d"),
    ("SDXL", r"^(lora_te2_|text_encoder_2\.text_model\.)"),
    ("Stable Diffusion (1.x, 2.x or SDXL)",
     r"^(lora_te1?_|text_encoder\.text_model\.|(lora_unet_|unet\.)?(down_blocks|up_blocks|mid_block|input_blocks|"
     r"output_blocks|middle_block)[._])"),
    ("Wan 2.x", r"^(" + KOHYA_PREFIX + r")?blocks[._]\d+[._](self_attn|cross_attn|attn1|attn2|ffn)[._]"),
    ("Z-Image", r"^(" + KOHYA_PREFIX + r")?(noise_refiner|context_refiner)[._]\d"),
))


def foreign_architecture(keys: list[str]) -> str | None:
    """The model family these keys belong to when it is recognisably another one, else None."""
    for family, pattern in _MARKERS:
        if any(pattern.search(strip_prefixes(key)) for key in keys):
            return family
    return None
