"""Sample images during training, made by the engine's own pipeline with the weights as they are.

The pipeline encodes its prompts with the text encoder, which has left memory by then (it is the largest
part after the transformer). So before it goes, every sample prompt (and the negative prompt) is run through
it once and its output recorded; during training a RecordedTextEncoder stands in for it and replays exactly
those outputs. The pipeline itself runs unchanged: tokenize, encode, drop the template, denoise, decode.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from engine.loading import QwenImageModules
from engine.pipelines.qwen_image import encode_prompts, generate
from engine.settings import GenerateSettings

logger = logging.getLogger(__name__)

SAMPLES_DIR = "samples"


def sample_name(step: int, index: int) -> str:
    """Relative path of sample `index` at `step`: samples/step-0000100-0.png."""
    return f"{SAMPLES_DIR}/step-{step:07d}-{index}.png"


class RecordedTextEncoder:
    """Replays recorded text-encoder outputs for token sequences seen before; KeyError for any other.

    Called as the pipeline calls the real encoder (input_ids, attention_mask, output_hidden_states) and returns
    hidden_states whose last entry holds, at every unmasked position, the recorded states of that sequence.
    """

    def __init__(self, records: dict[tuple[int, ...], torch.Tensor]):
        self.records = records

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, output_hidden_states: bool = True,
                 **_: Any) -> SimpleNamespace:
        rows = []
        for ids, mask in zip(input_ids.cpu(), attention_mask.cpu().bool()):
            key = tuple(ids[mask].tolist())
            if key not in self.records:
                raise KeyError("this prompt was not recorded before the text encoder left memory")
            states = self.records[key]
            row = states.new_zeros(len(ids), states.shape[-1])
            row[mask] = states
            rows.append(row)
        hidden = torch.stack(rows).to(input_ids.device)
        return SimpleNamespace(hidden_states=(hidden,))

    @classmethod
    def record(cls, modules: Any, prompts: Sequence[str]) -> RecordedTextEncoder:
        """Run each prompt through the tokenizer and text encoder of `modules` (QwenImageModules, or training's
        Encoders) the way the pipeline does, keeping the outputs."""
        records: dict[tuple[int, ...], torch.Tensor] = {}
        real = modules.text_encoder

        def recording(input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs: Any) -> Any:
            output = real(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
            for ids, mask, states in zip(input_ids, attention_mask.bool(), output.hidden_states[-1]):
                records[tuple(ids[mask].tolist())] = states[mask].detach().cpu()
            return output

        with torch.no_grad():
            for prompt in dict.fromkeys(prompts):  # one at a time, as the pipeline encodes them
                encode_prompts(replace(modules, text_encoder=recording), [prompt])
        return cls(records)

    def save(self, path: Path, key: str) -> None:
        tensors = {}
        for index, (ids, states) in enumerate(self.records.items()):
            tensors[f"ids.{index}"] = torch.tensor(ids, dtype=torch.int64)
            tensors[f"states.{index}"] = states.contiguous()
        temporary = Path(path).with_name(Path(path).name + ".tmp")
        save_file(tensors, str(temporary), metadata={"key": key})
        temporary.replace(path)

    @classmethod
    def load(cls, path: Path, key: str) -> RecordedTextEncoder | None:
        """The recording at path if it was made with `key`, else None."""
        if not Path(path).is_file():
            return None
        with safe_open(str(path), framework="pt") as handle:
            if (handle.metadata() or {}).get("key") != key:
                return None
            count = sum(1 for name in handle.keys() if name.startswith("ids."))
            return cls({tuple(handle.get_tensor(f"ids.{i}").tolist()): handle.get_tensor(f"states.{i}")
                        for i in range(count)})


@dataclass(frozen=True)
class SampleSpec:
    """What every sample shares: its size, steps, guidance and the negative prompt; prompt i uses seed + i."""

    width: int
    height: int
    steps: int
    cfg: float
    negative_prompt: str
    seed: int


def make_samples(modules: QwenImageModules, prompts: Sequence[str], spec: SampleSpec, out_dir: Path,
                 step: int, parameters: Callable[[GenerateSettings, int], dict]) -> list[str]:
    """Generate one image per prompt into out_dir/samples/; returns their paths relative to out_dir.

    `parameters(settings, seed)` gives the PNG's "parameters" chunk (engine.metadata.parameters_for).
    """
    from engine.metadata import save_png

    transformer = modules.transformer
    was_training = transformer.training
    transformer.eval()
    written = []
    try:
        for index, prompt in enumerate(prompts):
            run = GenerateSettings(prompt=prompt, negative_prompt=spec.negative_prompt, width=spec.width,
                                   height=spec.height, steps=spec.steps, cfg=spec.cfg, seed=spec.seed + index)
            image = generate(modules, run).images[0]
            name = sample_name(step, index)
            save_png(image, Path(out_dir) / name, parameters(run, run.seed))
            written.append(name)
    finally:
        transformer.train(was_training)
    return written
