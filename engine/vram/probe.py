"""What the machine has: the compute device and its memory, fp8 support, RAM, how much of it may be pinned,
free disk. Called when a plan is needed, never at import; the planner gets these facts as an argument.

Memory this process already holds counts as available (the caching allocator's reserve on the GPU, the
resident set in RAM): a model about to be replaced gives its memory back before the next one loads.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from engine.vram.vocabulary import GIB, DeviceKind

# Page-locked memory cannot be swapped or reclaimed; pinning more than half the RAM starves the system.
PINNABLE_FRACTION = 0.5
# fp8 matrix multiplies need Ada or Hopper (compute capability 8.9) or newer.
FP8_COMPUTE_CAPABILITY = (8, 9)


@dataclass(frozen=True)
class MachineFacts:
    device: DeviceKind
    device_name: str
    vram_total: int  # bytes; 0 on the CPU
    vram_available: int  # free plus what this process's allocator holds
    fp8_storage: bool  # weights can be stored as float8 and cast up per layer
    fp8_compute: bool  # the device multiplies in fp8 natively (reported, not yet used by plans)
    ram_total: int
    ram_available: int  # available to the OS plus what this process holds
    pinnable: int  # how much RAM may be page-locked
    disk_free: int  # at the models folder

    def __post_init__(self) -> None:
        for name in ("vram_total", "vram_available", "ram_total", "ram_available", "pinnable", "disk_free"):
            if getattr(self, name) < 0:
                raise ValueError(f"MachineFacts.{name} must not be negative, got {getattr(self, name)}")
        if not self.device.has_own_memory and (self.vram_total or self.pinnable):
            raise ValueError("MachineFacts: a CPU device has no VRAM and nothing to pin for")

    def summary(self) -> str:
        ram = f"RAM {self.ram_available / GIB:.1f} of {self.ram_total / GIB:.1f} GB available"
        disk = f"disk {self.disk_free / GIB:.0f} GB free"
        if not self.device.has_own_memory:
            return f"CPU ({self.device_name}); {ram}; {disk}"
        fp8 = "fp8 compute" if self.fp8_compute else ("fp8 storage" if self.fp8_storage else "no fp8")
        vram = f"{self.vram_available / GIB:.1f} of {self.vram_total / GIB:.1f} GB available"
        return f"{self.device.value.upper()} {self.device_name}: {vram}, {fp8}; {ram}, " \
               f"{self.pinnable / GIB:.1f} GB pinnable; {disk}"


def probe(device: str | object | None = None, disk_path: Path = Path(".")) -> MachineFacts:
    """Facts about `device` (a torch device or its name; default: CUDA when present, else MPS, else CPU)."""
    import platform

    import psutil
    import torch

    kind = _device_kind(device, torch)
    memory = psutil.virtual_memory()
    ram_total = memory.total
    ram_available = min(ram_total, memory.available + psutil.Process().memory_info().rss)
    disk_free = shutil.disk_usage(_existing(Path(disk_path))).free
    if kind is DeviceKind.CUDA:
        chosen = torch.device(device) if device is not None else None
        index = chosen.index if chosen is not None and chosen.index is not None else torch.cuda.current_device()
        free, total = torch.cuda.mem_get_info(index)
        capability = torch.cuda.get_device_capability(index)
        return MachineFacts(
            device=kind, device_name=torch.cuda.get_device_name(index), vram_total=total,
            vram_available=min(total, free + torch.cuda.memory_reserved(index)), fp8_storage=True,
            fp8_compute=capability >= FP8_COMPUTE_CAPABILITY, ram_total=ram_total, ram_available=ram_available,
            pinnable=min(ram_available, int(ram_total * PINNABLE_FRACTION)), disk_free=disk_free)
    if kind is DeviceKind.MPS:
        # Unified memory: the GPU may use up to Metal's recommended working set; nothing needs pinning.
        total = torch.mps.recommended_max_memory()
        return MachineFacts(
            device=kind, device_name="Apple GPU", vram_total=total,
            vram_available=max(0, total - torch.mps.driver_allocated_memory() + torch.mps.current_allocated_memory()),
            fp8_storage=False, fp8_compute=False, ram_total=ram_total, ram_available=ram_available, pinnable=0,
            disk_free=disk_free)
    return MachineFacts(
        device=kind, device_name=platform.processor() or platform.machine(), vram_total=0, vram_available=0,
        fp8_storage=True, fp8_compute=False, ram_total=ram_total, ram_available=ram_available, pinnable=0,
        disk_free=disk_free)


def _device_kind(device: object, torch) -> DeviceKind:
    if device is None:
        if torch.cuda.is_available():
            return DeviceKind.CUDA
        if torch.backends.mps.is_available():
            return DeviceKind.MPS
        return DeviceKind.CPU
    try:
        return DeviceKind(torch.device(device).type)
    except ValueError:
        known = ", ".join(kind.value for kind in DeviceKind)
        raise ValueError(f"device {device} is not one the planner knows (known: {known})") from None


def _existing(path: Path) -> Path:
    """The nearest existing folder at or above `path` (the models folder may not exist yet)."""
    path = path.resolve()
    while not path.exists():
        path = path.parent
    return path
