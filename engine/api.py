"""The Python front door: engine.load(preset_or_folder) -> Model, and Model.generate(...).

    import engine
    model = engine.load("qwen-image")            # a preset name, or a folder in the diffusers layout
    result = model.generate("a red circle in the top left on a blue background", seed=7)
    result.images[0].save("circle.png")

A Model holds the loaded modules and nothing per run, so several threads may call generate on one Model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from engine.loading import QwenImageModules, load_qwen_image
from engine.pipelines import qwen_image
from engine.pipelines.preview import LatentProjection
from engine.pipelines.run_control import RunControl
from engine.presets import DEFAULT_PRESET, Preset, Role, load_preset, preset_for_folder
from engine.settings import GenerateSettings, fit_to_limits
from engine.sources import DEFAULT_MODELS_DIR, resolve

logger = logging.getLogger(__name__)


def resolve_preset(preset_or_folder: str | Path) -> Preset:
    """A preset by name, or a preset made for a model folder (anything that is an existing directory)."""
    if isinstance(preset_or_folder, Path) or Path(str(preset_or_folder)).is_dir():
        return preset_for_folder(Path(preset_or_folder))
    return load_preset(str(preset_or_folder))


def settings_for(preset: Preset, prompt: str, **overrides) -> GenerateSettings:
    """GenerateSettings with the preset's defaults for every field not given (None counts as not given)."""
    defaults = preset.defaults
    values = dict(negative_prompt=defaults.negative_prompt, width=defaults.width, height=defaults.height,
                  steps=defaults.steps, cfg=defaults.cfg)
    values.update({key: value for key, value in overrides.items() if value is not None})
    return GenerateSettings(prompt=prompt, **values)


@dataclass
class Model:
    preset: Preset
    modules: QwenImageModules
    projection: LatentProjection

    def settings(self, prompt: str, **overrides) -> GenerateSettings:
        """Settings with this model's defaults for anything not given."""
        return settings_for(self.preset, prompt, **overrides)

    def generate(self, prompt: str | GenerateSettings, *, input_image: str | Path | Image.Image | None = None,
                 control: RunControl | None = None, **overrides) -> qwen_image.GenerationResult:
        """Generate images; keyword overrides are GenerateSettings fields (width, steps, cfg, seed, count...)."""
        settings = prompt if isinstance(prompt, GenerateSettings) else self.settings(prompt, **overrides)
        settings, notes = fit_to_limits(settings, self.preset.limits, self.preset.title)
        for note in notes:
            logger.info(note)
        image = qwen_image.load_input_image(input_image) if input_image is not None else None
        result = qwen_image.generate(self.modules, settings, image, control, self.projection)
        result.notes[:0] = notes
        return result


def load(preset_or_folder: str | Path = DEFAULT_PRESET, *, models_dir: Path = DEFAULT_MODELS_DIR,
         device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> Model:
    """Load a model by preset name or folder. Missing files raise MissingFilesError with the download command."""
    preset = resolve_preset(preset_or_folder)
    components = resolve(preset, Path(models_dir))
    modules = load_qwen_image(components, device, dtype)
    return Model(preset=preset, modules=modules,
                 projection=LatentProjection.for_model(components[Role.TRANSFORMER].folder.parent))
