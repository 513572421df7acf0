"""The System panel: what the machine has (the device the studio generates on, its free memory, free RAM), and
the VRAM plan for the chosen preset and settings before Generate, and the plan actually used after.

torch is imported on first use, not at start-up (it takes seconds); the system panel asks after the page is up.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import psutil

from engine.errors import EngineError
from engine.presets import Preset
from engine.settings import GenerateSettings, fit_to_limits
from engine.vram.planner import VramPlan
from engine.vram.workload import Workload
from studio.catalog import Availability

GIB = 1024**3
PLAN_PROMPT = "a plan"  # settings need a prompt; the plan does not depend on it


@dataclass(frozen=True)
class SystemFacts:
    device: str  # "cuda:0 (NVIDIA H100 80GB HBM3)", "cpu"
    vram_free: int | None  # bytes; None without a GPU
    vram_total: int | None
    ram_free: int
    ram_total: int


def system_facts(device: str | None = None) -> SystemFacts:
    """Facts about `device` (the engine's default when None)."""
    import torch

    from engine.loading import default_device

    chosen = torch.device(device) if device else default_device()
    memory = psutil.virtual_memory()
    vram_free = vram_total = None
    label = chosen.type
    if chosen.type == "cuda":
        index = chosen.index if chosen.index is not None else torch.cuda.current_device()
        vram_free, vram_total = torch.cuda.mem_get_info(index)
        label = f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return SystemFacts(device=label, vram_free=vram_free, vram_total=vram_total, ram_free=memory.available,
                       ram_total=memory.total)


def describe(facts: SystemFacts) -> str:
    """The system panel's text, in Markdown: one line."""
    parts = [f"**Device** {facts.device}"]
    if facts.vram_total is not None:
        parts.append(f"**VRAM** {facts.vram_free / GIB:.1f} of {facts.vram_total / GIB:.1f} GiB free")
    else:
        parts.append("**VRAM** none (no GPU): large models will be slow")
    parts.append(f"**RAM** {facts.ram_free / GIB:.1f} of {facts.ram_total / GIB:.1f} GiB free")
    return " · ".join(parts)


class PlanCache:
    """The System panel's VRAM plans, one per preset and workload (size, count, guidance).

    Planning reads safetensors headers and probes the machine: cheap, but the panel asks on every change of the
    form, and a slider moved back and forth asks the same question again. The machine's free memory is read once
    per entry, so a plan stays what it was when first shown until the studio restarts.
    """

    LIMIT = 256  # entries; past it the oldest is dropped

    def __init__(self, models_dir: Path, device: str | None = None):
        self.models_dir = Path(models_dir)
        self.device = device
        self._lock = threading.Lock()
        self._plans: dict[tuple[Preset, Workload], VramPlan] = {}

    def plan(self, preset: Preset, settings: GenerateSettings) -> VramPlan:
        """The plan engine.load would make for `preset` here, at `settings`. PlanError when it cannot fit."""
        key = (preset, Workload.of(settings))
        with self._lock:
            cached = self._plans.get(key)
        if cached is not None:
            return cached
        from engine.vram.preset_plan import plan_for_preset

        made = plan_for_preset(preset, settings, device=self.device, models_dir=self.models_dir)
        with self._lock:
            if len(self._plans) >= self.LIMIT:
                self._plans.pop(next(iter(self._plans)))
            self._plans[key] = made
        return made


def plan_before(plans: PlanCache, preset: Preset, availability: Availability, width: int, height: int, count: int,
                cfg: float) -> str:
    """The panel before Generate: the plan for these settings in words, or why there is none."""
    if not availability.present:
        where = ("they are not downloaded yet; the Models tab downloads them" if availability.downloadable
                 else f"they are missing from `{preset.folder}`; the Models tab lists what is missing")
        return f"**No plan for {preset.title}**: its model files are not here ({where})."
    try:
        settings, _ = fit_to_limits(GenerateSettings(prompt=PLAN_PROMPT, width=int(width), height=int(height),
                                                     count=int(count), cfg=float(cfg)), preset.limits, preset.title)
        planned = plans.plan(preset, settings)
    except EngineError as error:  # a size beyond the model, or a model that cannot fit this machine
        return f"**No plan for {preset.title} at {int(width)}x{int(height)}**: {error}"
    return f"**Plan for** {planned.explanation}{_notes(planned.notes)}"


def plan_used(planned: VramPlan | None, notes: list[str]) -> str:
    """The panel after a run: the plan the engine ran with, and the run's notes, among them what the plan changed
    on the way (an out-of-memory retry with a smaller plan, a size that needed another plan)."""
    if planned is None:
        return ""
    return f"**Used:** {planned.explanation}{_notes(list(planned.notes) + list(notes))}"


def _notes(notes: list[str] | tuple[str, ...]) -> str:
    return "".join(f"  \n{note}" for note in notes)
