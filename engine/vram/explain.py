"""A plan in words and as JSON: one line a person understands, and the figures behind it.

    Qwen-Image at 1328x1328 on 12 GB: transformer in fp8, 22 of 60 blocks resident, 38 streamed from pinned RAM;
    text encoder streamed through the GPU from pinned RAM; VAE whole; peak ~11.1 GB.
"""

from __future__ import annotations

from engine.presets import Role
from engine.vram.planner import ComponentPlan, VramPlan
from engine.vram.vocabulary import GIB, Compute, Placement

NAMES = {Role.TRANSFORMER: "transformer", Role.TEXT_ENCODER: "text encoder", Role.VAE: "VAE"}


def explain(plan: VramPlan) -> str:
    """One line: the model, the size, the budget, where each component lives, the expected peak."""
    parts = [_transformer(plan), _text_encoder(plan), _vae(plan)]
    return (f"{plan.title} at {plan.workload.label} on {plan.budget.memory_label}: {'; '.join(parts)}; "
            f"peak ~{plan.peak_device / GIB:.1f} GB.")


def placement(plan: VramPlan, role: Role) -> str:
    """Where one component lives, without its name: "22 of 60 blocks resident, 38 streamed from pinned RAM"."""
    return {Role.TRANSFORMER: _transformer, Role.TEXT_ENCODER: _text_encoder, Role.VAE: _vae}[role](
        plan).removeprefix(NAMES[role] + " ")


def describe_change(old: VramPlan, new: VramPlan) -> str:
    """What a new plan does differently: "budget 24.0 -> 18.0 GB; transformer 60 -> 41 of 60 blocks resident"."""
    changes = []
    if old.budget.device_bytes != new.budget.device_bytes:
        changes.append(f"budget {old.budget.device_bytes / GIB:.1f} -> {new.budget.device_bytes / GIB:.1f} GB")
    for before, after in zip(old.components, new.components):
        name = NAMES[after.role]
        if before.compute is not after.compute:
            changes.append(f"{name} moved to the {'CPU' if after.compute is Compute.CPU else 'GPU'}")
        if before.precision is not after.precision:
            changes.append(f"{name} stored in {after.precision.label} instead of {before.precision.label}")
        if before.resident_blocks != after.resident_blocks:
            changes.append(f"{name} {before.resident_blocks} -> {after.resident_blocks} of {after.blocks} "
                           "blocks resident")
        if before.disk_blocks != after.disk_blocks:
            changes.append(f"{name} {before.disk_blocks} -> {after.disk_blocks} blocks read from disk")
        if before.stays and not after.stays:
            changes.append(f"{name} parked between phases")
        if before.tiled != after.tiled:
            changes.append(f"{name} {'tiled' if after.tiled else 'whole'}")
    return "; ".join(changes) or "the same placement"


def plan_json(plan: VramPlan) -> dict:
    """The plan as plain data, for `python -m engine plan --json` and the studio."""
    gpu = plan.budget.device.has_own_memory
    return {
        "model": plan.title,
        "device": plan.budget.device.value,
        "mode": plan.mode.value,
        "workload": {"width": plan.workload.width, "height": plan.workload.height, "frames": plan.workload.frames,
                     "batch": plan.workload.batch, "cfg": plan.workload.cfg},
        "budget": {"vram_gb": _gb(plan.budget.device_bytes) if gpu else 0.0,
                   "ram_gb": _gb(plan.budget.host_bytes if gpu else plan.budget.device_bytes),
                   "pinnable_gb": _gb(plan.budget.pinnable)},
        "peak_vram_gb": _gb(plan.peak_device) if gpu else 0.0,
        "peak_ram_gb": _gb(plan.peak_ram),
        "phases": {phase.value: _gb(peak) for phase, peak in plan.phase_peaks},
        "components": {component.role.value: _component_json(plan, component) for component in plan.components},
        "explanation": explain(plan),
        "notes": list(plan.notes),
    }


def _component_json(plan: VramPlan, component: ComponentPlan) -> dict:
    runs_on = plan.budget.device.value if component.compute is Compute.DEVICE else "cpu"
    return {
        "compute": runs_on,
        "dtype": component.precision.value,
        "placement": placement(plan, component.role),
        "blocks": component.blocks,
        "resident_blocks": component.resident_blocks,
        "streamed_blocks": component.streamed_blocks,
        "ram_blocks": component.ram_blocks,
        "disk_blocks": component.disk_blocks,
        "parked_disk_blocks": component.parked_disk_blocks,
        "stays": component.stays,
        "parked_in": component.parked_in.value,
        "pinned": component.pinned,
        "tiled": component.tiled,
        "weights_gb": _gb(component.weight_bytes),
        "device_gb": _gb(component.device_bytes + component.buffer_bytes),
        "activation_gb": _gb(component.activation_bytes),
        "ram_gb": _gb(component.ram_bytes),
        "disk_gb": _gb(component.disk_bytes),
    }


def _gb(size: int) -> float:
    return round(size / GIB, 2)


def _on_gpu(plan: VramPlan) -> bool:
    return plan.budget.device.has_own_memory


def _ram(component: ComponentPlan) -> str:
    return "pinned RAM" if component.pinned else "RAM"


def _park(component: ComponentPlan) -> str:
    return "disk" if component.parked_in is Placement.DISK else _ram(component)


def _sources(component: ComponentPlan) -> str:
    if not component.disk_blocks:
        return f"from {_ram(component)}"
    if not component.ram_blocks:
        return "from disk"
    return f"from {_ram(component)} ({component.ram_blocks}) and disk ({component.disk_blocks})"


def _reread(component: ComponentPlan) -> str:
    """What of a parked component comes back from disk rather than RAM each time it resumes."""
    if component.stays or not component.parked_disk_blocks:
        return ""
    if component.parked_disk_blocks == component.resident_blocks:
        return ", its resident blocks read from disk for each image"
    return f", {component.parked_disk_blocks} of its resident blocks read from disk for each image"


def _transformer(plan: VramPlan) -> str:
    component = plan.component(Role.TRANSFORMER)
    kept = "resident" if _on_gpu(plan) else "in RAM"
    precision = component.precision.label
    if not component.streamed_blocks:
        if component.stays:
            return f"transformer {kept} in {precision}"
        if component.parked_in is Placement.DISK and component.parked_disk_blocks == component.blocks:
            return f"transformer in {precision}, {kept} while it runs, read from disk for each image"
        return (f"transformer in {precision}, {kept} while it runs, parked in {_park(component)} otherwise"
                + _reread(component))
    text = (f"transformer in {precision}, {component.resident_blocks} of {component.blocks} blocks {kept}, "
            f"{component.streamed_blocks} streamed {_sources(component)}")
    return text + _reread(component)


def _text_encoder(plan: VramPlan) -> str:
    component = plan.component(Role.TEXT_ENCODER)
    if component.compute is Compute.CPU:
        streamed = f", {component.disk_blocks} of {component.blocks} blocks streamed from disk" \
            if component.disk_blocks else ""
        return f"text encoder on the CPU{streamed}"
    if component.stays:
        return "text encoder resident" if _on_gpu(plan) else "text encoder in RAM"
    if not _on_gpu(plan):
        if component.streamed_blocks:
            return f"text encoder streamed {_sources(component)}"
        return f"text encoder read from {_park(component)} for each image"
    if not component.streamed_blocks:
        return f"text encoder on GPU then parked in {_park(component)}"
    resident = f", {component.resident_blocks} of {component.blocks} blocks resident while it runs" \
        if component.resident_blocks else ""
    return f"text encoder streamed through the GPU {_sources(component)}{resident}{_reread(component)}"


def _vae(plan: VramPlan) -> str:
    component = plan.component(Role.VAE)
    shape = "tiled" if component.tiled else "whole"
    if not component.stays and component.parked_in is Placement.DISK:
        return f"VAE {shape}, read from disk for each image"
    return f"VAE {shape}"


def plan_lines(plan: VramPlan) -> list[str]:
    """The explanation, then a row per component and the phases' peaks, for a terminal or the System panel."""
    gpu = _on_gpu(plan)
    rows = [("component", "runs on", "dtype", "blocks", "resident", "from RAM", "from disk", "device GB", "RAM GB")]
    for component in plan.components:
        rows.append((NAMES[component.role], plan.budget.device.value if component.compute is Compute.DEVICE else "cpu",
                     component.precision.label, str(component.blocks), str(component.resident_blocks),
                     str(component.ram_blocks) + (" pinned" if component.pinned and component.ram_blocks else ""),
                     str(component.disk_blocks), f"{(component.device_bytes + component.buffer_bytes) / GIB:.2f}",
                     f"{component.ram_bytes / GIB:.2f}"))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = [explain(plan), ""]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    phases = ", ".join(f"{phase.value} {peak / GIB:.1f} GB" for phase, peak in plan.phase_peaks)
    memory = "VRAM" if gpu else "RAM"
    lines.append(f"peak {memory} by phase: {phases}" + (f"; RAM ~{plan.peak_ram / GIB:.1f} GB" if gpu else ""))
    lines += [f"note: {note}" for note in plan.notes]
    return lines
