"""The words VRAM plans are made of: devices, storage precisions, placements, modes, and the byte unit.

GB in this package means GiB (2**30 bytes), the unit GPU memory is sold and reported in: an "8 GB" card holds
8192 MiB. Kept free of torch so that planning stays a pure, cheap computation.
"""

from __future__ import annotations

from enum import Enum

GIB = 2**30


def gib(count: float) -> int:
    """Bytes in `count` GB (GiB)."""
    return int(round(count * GIB))


class DeviceKind(str, Enum):
    """The machine's compute device."""

    CUDA = "cuda"
    MPS = "mps"
    CPU = "cpu"

    @property
    def has_own_memory(self) -> bool:
        """Whether the device has memory apart from the RAM (on the CPU, the RAM is the device's memory)."""
        return self is not DeviceKind.CPU


class Compute(str, Enum):
    """Where one component runs: on the machine's compute device, or on the CPU beside it."""

    DEVICE = "device"
    CPU = "cpu"


class Precision(str, Enum):
    """Storage dtype of weights; computation always happens in the model's compute dtype."""

    FP32 = "float32"
    BF16 = "bfloat16"
    FP16 = "float16"
    FP8 = "float8_e4m3fn"

    @property
    def bytes(self) -> int:
        return {Precision.FP32: 4, Precision.BF16: 2, Precision.FP16: 2, Precision.FP8: 1}[self]

    @property
    def label(self) -> str:
        return {Precision.FP32: "float32", Precision.BF16: "bf16", Precision.FP16: "fp16", Precision.FP8: "fp8"}[self]

    @classmethod
    def of(cls, dtype: object) -> "Precision":
        """The precision of a torch dtype (or its name), e.g. torch.bfloat16 -> BF16."""
        name = str(dtype).removeprefix("torch.")
        try:
            return cls(name)
        except ValueError:
            known = ", ".join(member.value for member in cls)
            raise ValueError(f"dtype {name} has no storage precision here (known: {known})") from None


class Placement(str, Enum):
    """Where weights wait while they are not being computed with. RAM copies may be page-locked (pinned), so that
    copies to the GPU run asynchronously at full bus speed; plans say so per component."""

    DEVICE = "device"  # on the compute device, all the time
    RAM = "ram"
    DISK = "disk"  # nowhere in memory: read from the model's own safetensors files when needed


class Mode(str, Enum):
    """What the user allows the planner to do."""

    AUTO = "auto"  # lowest precision only when the full one cannot stay resident; stream what does not fit
    RESIDENT = "resident"  # everything resident in full precision, or refuse
    STREAM = "stream"  # full precision, stream as many blocks as needed (never fp8)
    FP8 = "fp8"  # fp8 storage for the transformer blocks, stream as needed


class Phase(str, Enum):
    """The stages of a generation; one component computes in each, the others wait."""

    ENCODE = "encode"  # text encoder
    DENOISE = "denoise"  # transformer
    DECODE = "decode"  # VAE (also its encoding of an input image)
