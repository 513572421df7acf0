"""Safetensors files, inspected without loading them.

The header of a safetensors file (8-byte length, then JSON) names every tensor with its dtype, shape and byte
range. Reading it costs microseconds, so a truncated download is caught before any model is built, and the
VRAM planner can size components without touching their weights.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from engine.errors import WeightsError

# Bytes per element of the safetensors dtype codes.
DTYPE_BYTES = {
    "F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2,
    "F8_E4M3": 1, "F8_E5M2": 1, "I8": 1, "U8": 1, "BOOL": 1,
}

# A header larger than this is not a real header but a damaged or foreign file.
MAX_HEADER_BYTES = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int


@dataclass(frozen=True)
class SafetensorsHeader:
    path: Path
    tensors: tuple[TensorInfo, ...]
    metadata: dict[str, str]

    @property
    def nbytes(self) -> int:
        return sum(tensor.nbytes for tensor in self.tensors)


def read_header(path: Path) -> SafetensorsHeader:
    """Parse a safetensors header and check the file holds every byte the header promises."""
    path = Path(path)
    hint = "Download the file again, or delete it so that the next download fetches it."
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise WeightsError(f"{path} is not a safetensors file: it is only {size} bytes long.", hint)
            (header_length,) = struct.unpack("<Q", prefix)
            if header_length > min(MAX_HEADER_BYTES, size - 8):
                raise WeightsError(f"{path} is not a valid safetensors file (damaged header).", hint)
            raw = handle.read(header_length)
    except OSError as error:
        raise WeightsError(f"Cannot read {path}: {error.strerror or error}.") from None
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise WeightsError(f"{path} is not a valid safetensors file (damaged header).", hint) from None
    metadata = header.pop("__metadata__", None) or {}
    tensors, data_end = [], 0
    for name, entry in header.items():
        try:
            start, end = entry["data_offsets"]
            tensors.append(TensorInfo(name, entry["dtype"], tuple(entry["shape"]), end - start))
        except (KeyError, TypeError, ValueError):
            raise WeightsError(f"{path} is not a valid safetensors file (bad entry for {name!r}).", hint) from None
        data_end = max(data_end, end)
    expected = 8 + header_length + data_end
    if size < expected:
        raise WeightsError(
            f"{path} is truncated: the header promises {expected:,} bytes but the file has {size:,}.", hint)
    return SafetensorsHeader(path=path, tensors=tuple(tensors), metadata=metadata)


def check_files(paths: list[Path]) -> int:
    """Validate every file's header; return the total tensor bytes."""
    return sum(read_header(path).nbytes for path in paths)
