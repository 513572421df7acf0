"""What the machine has: the device the studio generates on, its free memory, and free RAM.

torch is imported on first use, not at start-up (it takes seconds); the system panel asks after the page is up.
"""

from __future__ import annotations

from dataclasses import dataclass

import psutil

GIB = 1024**3


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
