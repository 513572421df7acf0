"""status.json of a training run: what a watcher (the studio's Train tab) reads to show where the run is.

Written atomically (temp file + rename) after every log line and at the end, so a reader never sees half a
file. Samples are paths relative to the run's output folder; eta_s and loss are null until known.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

STATUS_FILE = "status.json"


class RunState(str, Enum):
    RUNNING = "running"
    FINISHED = "finished"
    STOPPED = "stopped"
    FAILED = "failed"


@dataclass(frozen=True)
class RunStatus:
    state: RunState
    step: int = 0
    total: int = 0
    loss: float | None = None
    eta_s: float | None = None
    message: str = ""
    lora: str | None = None  # the LoRA file, once written
    samples: tuple[str, ...] = field(default_factory=tuple)

    def with_(self, **changes: Any) -> RunStatus:
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["state"] = self.state.value
        data["samples"] = list(self.samples)
        for key in ("loss", "eta_s"):  # JSON has no inf or nan
            if data[key] is not None and not math.isfinite(data[key]):
                data[key] = None
        return data


def write_status(output_dir: Path, status: RunStatus) -> Path:
    path = Path(output_dir) / STATUS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".status.", suffix=".part")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            json.dump(status.to_json(), file, indent=1)
            file.write("\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def read_status(output_dir: Path) -> RunStatus | None:
    """The run's status, or None when it has written none (or it is unreadable)."""
    try:
        data = json.loads((Path(output_dir) / STATUS_FILE).read_text(encoding="utf-8"))
        return RunStatus(state=RunState(data["state"]), step=data["step"], total=data["total"], loss=data["loss"],
                         eta_s=data["eta_s"], message=data["message"], lora=data["lora"],
                         samples=tuple(data["samples"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
