"""LoRA pickers for the generating tabs: rows of a LoRA file from the LoRA folder and its weight, with the file's
trigger words under each; what they pick becomes GenerateSettings.loras, and what an image recorded puts them back.

A picker's value is the file's name inside the LoRA folder. The page may send any text as that name, so only
names the folder lists become paths, and those paths are absolute and inside the folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from engine.errors import EngineError, LoraError
from engine.settings import LoraChoice
from studio.config import StudioConfig
from studio.loras import LORA_SUFFIX, list_loras

ROWS = 4
WEIGHT_MIN, WEIGHT_MAX, WEIGHT_STEP = -2.0, 2.0, 0.05  # the engine takes up to ±4; past ±2 images burn
DEFAULT_WEIGHT = 1.0  # as trained
NONE = ""  # a picker holding no LoRA


@dataclass
class LoraPickers:
    accordion: gr.Accordion
    files: list[gr.Dropdown]
    weights: list[gr.Slider]
    triggers: list[gr.Markdown]
    refresh: gr.Button

    @property
    def fields(self) -> list:
        """Each picker followed by its weight: the order chosen_loras and restored_values use."""
        return [component for pair in zip(self.files, self.weights) for component in pair]


def lora_names(config: StudioConfig) -> list[str]:
    """The LoRA files on offer, as names inside the LoRA folder ("star.safetensors", "styles/ink.safetensors")."""
    folder = Path(config.loras_dir)
    return [path.relative_to(folder).as_posix() for path in list_loras(config)]


def lora_choices(names: Sequence[str]) -> list[tuple[str, str]]:
    return [("None", NONE)] + [(name.removesuffix(LORA_SUFFIX), name) for name in names]


def build(names: Sequence[str], folder: Path, prefix: str) -> LoraPickers:
    """The LoRA accordion; elem_ids start with `prefix` ("t2i-lora-1", "t2i-lora-weight-1", ...)."""
    files, weights, triggers = [], [], []
    with gr.Accordion("LoRA", open=False, elem_id=f"{prefix}-lora") as accordion:
        gr.Markdown(f"LoRA files (.safetensors) from `{folder}`.", elem_id=f"{prefix}-lora-folder")
        for row in range(1, ROWS + 1):
            with gr.Row(equal_height=True):
                # Custom values pass Gradio's check, so files added since the page loaded work; lora_path checks them.
                files.append(gr.Dropdown(lora_choices(names), value=NONE, label=f"LoRA {row}", allow_custom_value=True,
                                         scale=3, elem_id=f"{prefix}-lora-{row}"))
                weights.append(gr.Slider(WEIGHT_MIN, WEIGHT_MAX, value=DEFAULT_WEIGHT, step=WEIGHT_STEP,
                                         label="Weight", scale=2, elem_id=f"{prefix}-lora-weight-{row}"))
            triggers.append(gr.Markdown("", elem_id=f"{prefix}-lora-trigger-{row}"))
        refresh = gr.Button("Refresh the list", size="sm", elem_id=f"{prefix}-lora-refresh")
    return LoraPickers(accordion, files, weights, triggers, refresh)


def lora_path(config: StudioConfig, name: str, listed: Sequence[str] | None = None) -> Path:
    """The absolute path of the LoRA a picker names; LoraError for any name the LoRA folder does not list."""
    if name not in (lora_names(config) if listed is None else listed):
        raise LoraError(f"The LoRA '{name}' is not in the LoRA folder ({config.loras_dir}).",
                        f"Pick one from the list; to add one, put its {LORA_SUFFIX} file in that folder and press "
                        "Refresh the list.")
    return Path(config.loras_dir).resolve() / name


def chosen_loras(config: StudioConfig, values: Sequence) -> tuple[LoraChoice, ...]:
    """The pickers' values (each name followed by its weight) as the settings' LoRAs; empty pickers are skipped."""
    listed = lora_names(config)
    chosen: dict[str, LoraChoice] = {}
    for name, weight in zip(values[::2], values[1::2]):
        if not name:
            continue
        if name in chosen:
            raise LoraError(f"The LoRA '{name}' is picked twice.", "Pick it once and set its weight.")
        chosen[name] = LoraChoice(str(lora_path(config, name, listed)), float(weight))
    return tuple(chosen.values())


def trigger_text(config: StudioConfig, name: str | None) -> str:
    """What goes under a picker: the LoRA's trigger words (the prompt needs them), from the file's header."""
    if not name:
        return ""
    try:
        info = _read_info(lora_path(config, name))
    except EngineError as error:
        return f"**Cannot use this LoRA**: {error}"
    made_for = f" · made for {info.base_model}" if info.base_model else ""
    if not info.trigger_words:
        return f"No trigger words recorded in this file{made_for}."
    return f"Trigger words: {', '.join(f'`{word}`' for word in info.trigger_words)}{made_for}"


def _read_info(path: Path):
    from engine.lora.files import read_lora_info  # imports torch: not at the studio's start

    return read_lora_info(path)


def restored_values(config: StudioConfig, recorded: Sequence[LoraChoice]) -> tuple[list, list[str]]:
    """Values for the pickers (each name followed by its weight) from the LoRAs an image recorded, found in the
    LoRA folder by their file name (the image may come from another machine), and warnings for what was not."""
    listed = lora_names(config)
    folder = Path(config.loras_dir).resolve()
    rows, warnings = [], []
    for lora in recorded:
        name = _find(Path(lora.path), listed, folder)
        if name is None:
            warnings.append(f"The LoRA '{Path(lora.path).name}' recorded in the image is not in the LoRA folder "
                            f"({config.loras_dir}); its picker was left empty.")
            continue
        weight = min(max(lora.weight, WEIGHT_MIN), WEIGHT_MAX)
        if weight != lora.weight:
            warnings.append(f"The LoRA '{name}' was used at weight {lora.weight:g}; the pickers go from "
                            f"{WEIGHT_MIN:g} to {WEIGHT_MAX:g}, so it is set to {weight:g}.")
        rows.append((name, weight))
    if len(rows) > ROWS:
        warnings.append(f"The image used {len(rows)} LoRAs; the first {ROWS} were restored.")
        rows = rows[:ROWS]
    rows += [(NONE, DEFAULT_WEIGHT)] * (ROWS - len(rows))
    return [value for row in rows for value in row], warnings


def _find(path: Path, listed: Sequence[str], folder: Path) -> str | None:
    """The listed name of the recorded file: the same file in this folder, else the first of the same file name."""
    if path.is_absolute() and path.parent.resolve().is_relative_to(folder):
        name = (path.parent.resolve() / path.name).relative_to(folder).as_posix()
        if name in listed:
            return name
    return next((name for name in listed if Path(name).name == path.name), None)


def wire(pickers: LoraPickers, config: StudioConfig, page_load) -> None:
    """Refresh (the button, and each page load) lists the folder again; a picked file shows its trigger words."""
    refresh_on(pickers, config, [pickers.refresh.click, page_load])
    for picker, trigger in zip(pickers.files, pickers.triggers):
        picker.change(lambda name: trigger_text(config, name), picker, trigger, api_visibility="private",
                      queue=False)


def refresh_on(pickers: LoraPickers, config: StudioConfig, triggers: list) -> None:
    """List the LoRA folder again in every picker when any of `triggers` fires (e.g. a training run's LoRA
    landing there); a picked file stays picked."""

    def refresh():
        choices = lora_choices(lora_names(config))
        return [gr.Dropdown(choices=choices) for _ in pickers.files]

    gr.on(triggers, refresh, None, pickers.files, api_visibility="private", queue=False)
