"""Asking a training run to stop: a STOP file in its output folder, or SIGTERM / SIGINT.

Either one only raises a flag; the loop reads it after each step, so the step in progress finishes and the
run saves a checkpoint and its LoRA before it exits. The file is how a parent that does not own the
process (or a person with a shell) asks; the signals are how a terminal or a process manager asks.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from types import FrameType

logger = logging.getLogger(__name__)

STOP_FILE = "STOP"
_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """A callable for the loop's should_stop; a context manager that installs (and restores) the signal handlers."""

    def __init__(self, output_dir: Path):
        self.path = Path(output_dir) / STOP_FILE
        self.signalled: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():  # signal handlers can only be set there
            for number in _SIGNALS:
                self._previous[number] = signal.signal(number, self._on_signal)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def _on_signal(self, number: int, frame: FrameType | None) -> None:
        if self.signalled is not None and number == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: the person means now
        self.signalled = number
        logger.warning("Received %s: stopping after this step", signal.Signals(number).name)

    @property
    def requested(self) -> bool:
        return self.signalled is not None or self.path.exists()

    def __call__(self, step: int) -> bool:
        return self.requested

    def clear(self) -> None:
        """Remove the STOP file, so that the next run (a resume) does not stop at once."""
        self.path.unlink(missing_ok=True)
