"""The Python front door: engine.load(preset_or_folder) -> Model, and Model.generate(...).

    import engine
    model = engine.load("qwen-image")            # a preset name, or a folder in the diffusers layout
    result = model.generate("a red circle in the top left on a blue background", seed=7)
    result.images[0].save("circle.png")

A Model holds the loaded modules and nothing per run. Several threads may call generate on one Model; their
runs take turns, because the LoRAs a run asks for (settings.loras) act on the shared transformer until it ends.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image

from engine.loading import QwenImageModules, default_device, default_dtype
from engine.lora.active import ActiveLoras
from engine.pipelines import qwen_image
from engine.pipelines.preview import LatentProjection
from engine.pipelines.run_control import RunControl
from engine.presets import DEFAULT_PRESET, Family, Preset, Role, load_preset, preset_for_folder
from engine.settings import GenerateSettings, fit_to_limits
from engine.sources import DEFAULT_MODELS_DIR, resolve
from engine.vram.vocabulary import Mode

if TYPE_CHECKING:
    from engine.vram.apply import PlannedModel
    from engine.vram.planner import VramPlan

logger = logging.getLogger(__name__)

# The architecture a family's LoRAs are made for, as errors name it ("... a LoRA for FLUX.1, not Qwen-Image.").
ARCHITECTURE_TITLES = {Family.QWEN_IMAGE: "Qwen-Image"}


def resolve_preset(preset_or_folder: str | Path | Preset) -> Preset:
    """A preset by name, a preset made for a model folder (anything that is an existing directory), or a
    Preset already read (the studio reads presets from the folder it was given) as is."""
    if isinstance(preset_or_folder, Preset):
        return preset_or_folder
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
    planned: PlannedModel | None = None  # the VRAM plan in effect and its runtime (engine.vram)
    loras: ActiveLoras = field(init=False, repr=False)  # the LoRAs on the transformer, set by each run

    def __post_init__(self) -> None:
        self.loras = ActiveLoras(ARCHITECTURE_TITLES[self.preset.family])

    @property
    def plan(self) -> VramPlan | None:
        """Where the weights live now (engine.vram's plan); a run may move to another and says so in its notes."""
        return self.planned.plan if self.planned is not None else None

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

        def run(modules: QwenImageModules) -> qwen_image.GenerationResult:
            # Also after a fallback built the transformer again: the LoRAs follow it to the new one.
            self.loras.use(modules.transformer, settings.loras)
            return qwen_image.generate(modules, settings, image, control, self.projection)

        with self.loras.lock:
            if self.planned is None:
                result = run(self.modules)
            else:
                from engine.vram.fallback import run_with_fallback
                from engine.vram.workload import Workload

                # Out of memory: plan again with less and retry; the notes say what changed.
                result, vram_notes = run_with_fallback(self.planned, Workload.of(settings), run)
                self.modules = self.planned.modules
                notes += vram_notes
                result.plan = self.planned.plan
        result.notes[:0] = notes
        return result


def warm_up() -> None:
    """Import what a first load needs (diffusers' model modules take seconds), e.g. in the background while
    a user types a first prompt; loads nothing."""
    from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel  # noqa: F401
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2Tokenizer  # noqa: F401


def load(preset_or_folder: str | Path | Preset = DEFAULT_PRESET, *, models_dir: Path = DEFAULT_MODELS_DIR,
         device: str | torch.device | None = None, dtype: torch.dtype | None = None,
         vram_gb: float | None = None, ram_gb: float | None = None, mode: Mode | str = Mode.AUTO) -> Model:
    """Load a model by preset (name or Preset) or folder. Missing files raise MissingFilesError with the
    download command.

    Where the weights live is planned for this machine (engine.vram): what fits stays on the device, the rest
    streams from RAM or disk, in fp8 where that keeps more resident. vram_gb and ram_gb limit the memory the
    plan may use (on the CPU, ram_gb); mode forces a strategy (auto, resident, stream, fp8). model.plan says
    what was chosen; PlanError when the model cannot fit at all."""
    from engine.vram.apply import load_planned
    from engine.vram.preset_plan import machine_budget
    from engine.vram.vocabulary import Precision

    preset = resolve_preset(preset_or_folder)
    components = resolve(preset, Path(models_dir))
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or default_dtype(device)
    budget = machine_budget(device, vram_gb, ram_gb, Precision.of(dtype), Path(models_dir))
    planned = load_planned(preset, components, device, dtype, budget, Mode(mode))
    return Model(preset=preset, modules=planned.modules, planned=planned,
                 projection=LatentProjection.for_model(components[Role.TRANSFORMER].folder.parent))
