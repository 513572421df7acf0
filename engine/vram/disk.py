"""Reading single tensors from a model's own safetensors files, for weights a plan keeps on disk.

Positional reads (os.preadv) into a buffer we own, rather than a memory map: the kernel's page cache holds what
was read, where it counts as cache and not as this process's memory, and no mapping keeps a whole file resident.
"""

from __future__ import annotations

import json
import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.errors import WeightsError
from engine.weights import read_header

# safetensors dtype codes as torch dtypes.
TORCH_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64, "I32": torch.int32,
    "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}


@dataclass(frozen=True)
class TensorLocation:
    path: Path
    offset: int  # of the first data byte, from the start of the file
    nbytes: int
    dtype: torch.dtype
    shape: tuple[int, ...]


def tensor_locations(paths: list[Path]) -> dict[str, TensorLocation]:
    """Every tensor of the files, by its name in the checkpoint; headers are validated first."""
    locations = {}
    for path in paths:
        read_header(path)  # a damaged or truncated file fails here with its name
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        header.pop("__metadata__", None)
        for name, entry in header.items():
            if entry["dtype"] not in TORCH_DTYPES:
                raise WeightsError(f"{path}: tensor {name} has dtype {entry['dtype']}, which cannot be streamed.")
            start, end = entry["data_offsets"]
            locations[name] = TensorLocation(path, 8 + length + start, end - start, TORCH_DTYPES[entry["dtype"]],
                                             tuple(entry["shape"]))
    return locations


class DiskReader:
    """Reads tensors by location, keeping one descriptor per file; safe to use from several threads."""

    def __init__(self) -> None:
        self._descriptors: dict[Path, int] = {}
        self._lock = threading.Lock()

    def read(self, location: TensorLocation, into: torch.Tensor | None = None) -> torch.Tensor:
        """The tensor at `location`, in its file dtype, in `into` (a uint8 CPU buffer of enough bytes) or new memory."""
        buffer = torch.empty(location.nbytes, dtype=torch.uint8) if into is None else into[:location.nbytes]
        view, done = memoryview(buffer.numpy()), 0
        descriptor = self._descriptor(location.path)
        while done < location.nbytes:
            count = os.preadv(descriptor, [view[done:]], location.offset + done)
            if count == 0:
                raise WeightsError(f"{location.path} ended early while reading a tensor; the file changed on disk.",
                                   "Download the file again.")
            done += count
        if location.nbytes == 0:
            return torch.empty(location.shape, dtype=location.dtype)
        return buffer.view(location.dtype).view(location.shape)

    def close(self) -> None:
        with self._lock:
            for descriptor in self._descriptors.values():
                os.close(descriptor)
            self._descriptors.clear()

    def _descriptor(self, path: Path) -> int:
        with self._lock:
            if path not in self._descriptors:
                self._descriptors[path] = os.open(path, os.O_RDONLY)
            return self._descriptors[path]
