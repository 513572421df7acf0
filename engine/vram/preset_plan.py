"""Plans for a preset and settings: what the planner needs gathered (sizes from the files or nominal, the
workload, the machine's budget), for the CLI's `plan` verb, the front door and the studio's System panel.

    import engine.vram
    plan = engine.vram.plan_for_preset("qwen-image", settings)      # the probed machine
    plan = engine.vram.plan_for_preset("qwen-image", vram_gb=12, ram_gb=64)   # a 12 GB GPU with 64 GB RAM
    print(plan.explanation)
"""

from __future__ import annotations

from pathlib import Path

from engine.presets import Preset
from engine.settings import GenerateSettings
from engine.sources import DEFAULT_MODELS_DIR
from engine.vram.planner import Budget, PlanError, VramPlan, plan
from engine.vram.sizes import ModelSizes, preset_sizes
from engine.vram.vocabulary import GIB, DeviceKind, Mode, Precision
from engine.vram.workload import Workload

# The dtype each kind of device computes in (engine.loading.default_dtype).
COMPUTE = {DeviceKind.CUDA: Precision.BF16, DeviceKind.MPS: Precision.FP32, DeviceKind.CPU: Precision.FP32}


def machine_budget(device: object = None, vram_gb: float | None = None, ram_gb: float | None = None,
                   compute: Precision | None = None, models_dir: Path = DEFAULT_MODELS_DIR) -> Budget:
    """This machine's budget (probed now), within the limits the user set."""
    from engine.vram.probe import probe

    facts = probe(device, models_dir)
    return Budget.for_machine(facts, compute or COMPUTE[facts.device], vram_gb, ram_gb)


def hypothetical_budget(device: DeviceKind | str | None = None, vram_gb: float | None = None,
                        ram_gb: float | None = None, models_dir: Path = DEFAULT_MODELS_DIR) -> Budget:
    """A machine the user describes (`plan --vram 12 --ram 64`): a CUDA GPU when vram_gb is given, and this
    machine's figures for whatever is not given."""
    kind = DeviceKind(device) if device is not None else (DeviceKind.CUDA if vram_gb is not None else None)
    if kind is None or ram_gb is None or (kind.has_own_memory and vram_gb is None):
        from engine.vram.probe import probe

        facts = probe(None, models_dir)
        kind = kind or facts.device
        if kind.has_own_memory and vram_gb is None:
            if facts.device is not kind:
                raise PlanError(f"This machine has no {kind.value.upper()} device to measure.",
                                "Give the VRAM to plan for (--vram GB).")
            vram_gb = facts.vram_available / GIB
        ram_gb = facts.ram_available / GIB if ram_gb is None else ram_gb
    for name, value in (("vram", vram_gb), ("ram", ram_gb)):
        if value is not None and not value > 0:
            raise PlanError(f"--{name} must be a positive number of GB, got {value}.")
    if not kind.has_own_memory:
        if vram_gb is not None:
            raise PlanError("--vram applies to a GPU; on the CPU the RAM is the device's memory.",
                            "Give --ram instead.")
        return Budget.cpu(ram_gb)
    return Budget.gpu(vram_gb, ram_gb, device=kind, fp8_storage=kind is not DeviceKind.MPS,
                      pinnable_gb=0 if kind is DeviceKind.MPS else None, compute=COMPUTE[kind])


def plan_for_preset(preset: str | Path | Preset, settings: GenerateSettings | None = None, *,
                    vram_gb: float | None = None, ram_gb: float | None = None, mode: Mode | str = Mode.AUTO,
                    device: object = None, budget: Budget | None = None,
                    models_dir: Path = DEFAULT_MODELS_DIR, sizes: ModelSizes | None = None) -> VramPlan:
    """The plan engine.load would make for `preset` at `settings` (default: the preset's defaults) on this
    machine within the limits given, or within `budget`. PlanError when it cannot fit."""
    from engine.api import resolve_preset

    preset = resolve_preset(preset)
    workload = Workload.of(settings) if settings is not None else Workload.preset_default(preset)
    budget = budget or machine_budget(device, vram_gb, ram_gb, models_dir=Path(models_dir))
    return plan(sizes or preset_sizes(preset, Path(models_dir)), workload, budget, Mode(mode))


def describe_plan(preset: str | Path | Preset, settings: GenerateSettings | None = None, **limits) -> str:
    """plan_for_preset(...) in one line: the explanation, or why it cannot fit."""
    try:
        return plan_for_preset(preset, settings, **limits).explanation
    except PlanError as error:
        return str(error)


def plan_for_model(model, settings: GenerateSettings) -> VramPlan:
    """The plan a loaded engine.Model will run `settings` with: its current plan when that fits, else the one
    it will switch to before running (see fallback.run_with_fallback)."""
    from engine.vram.planner import fits

    current, workload = model.plan, Workload.of(settings)
    if fits(current, model.planned.sizes, workload):
        return current
    return plan(model.planned.sizes, workload, current.budget, current.mode)
