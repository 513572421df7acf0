"""What a caller hands a running job: progress and preview callbacks and a cancel switch.

Created per run and never stored on the shared pipeline, so two users can run on one loaded model.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from PIL import Image

from engine.errors import Cancelled


@dataclass(frozen=True)
class Progress:
    step: int  # steps finished
    total: int
    elapsed_s: float

    @property
    def eta_s(self) -> float:
        """Seconds left, from the mean time per finished step."""
        return self.elapsed_s / self.step * (self.total - self.step) if self.step else float("nan")

    @property
    def fraction(self) -> float:
        return self.step / self.total if self.total else 1.0


@dataclass
class RunControl:
    on_progress: Callable[[Progress], None] | None = None
    on_preview: Callable[[int, list[Image.Image]], None] | None = None
    preview_every: int = 0  # steps between previews; 0 = none
    cancel_event: threading.Event = field(default_factory=threading.Event)
    _started: float = field(default_factory=time.perf_counter, repr=False)

    def cancel(self) -> None:
        self.cancel_event.set()

    def check_cancelled(self) -> None:
        if self.cancel_event.is_set():
            raise Cancelled("Cancelled before the images were finished; nothing was saved.")

    def start(self, total: int) -> None:
        self._started = time.perf_counter()
        self.report(0, total)

    def report(self, step: int, total: int) -> None:
        if self.on_progress is not None:
            self.on_progress(Progress(step, total, time.perf_counter() - self._started))

    def wants_preview(self, step: int, total: int) -> bool:
        return self.on_preview is not None and self.preview_every > 0 and step % self.preview_every == 0 and step < total
