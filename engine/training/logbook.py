"""The loss log of a run: one JSON object per line (step, loss, lr, seconds), kept consistent on resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class Logbook:
    def __init__(self, path: Path):
        self.path = Path(path)

    def rewind(self, step: int) -> None:
        """Drop the lines after `step`: a resumed run writes them again, from the same state."""
        if not self.path.is_file():
            return
        kept = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                if line.strip() and json.loads(line)["step"] <= step]
        self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    def write(self, **record: Any) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as file:
            file.write(json.dumps(record) + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]
