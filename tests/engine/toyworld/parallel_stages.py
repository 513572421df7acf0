"""Stand-in training stages for test_parallel_training.py, at module level so spawned workers can import them."""

from __future__ import annotations

import os
import time
from pathlib import Path

from engine.errors import EngineError


def record_pid_and_wait(folder: str, seconds: float, progress=None) -> None:
    (Path(folder) / f"worker-{os.environ['RANK']}.pid").write_text(str(os.getpid()))
    time.sleep(seconds)


def report_steps(steps: int, progress=None) -> None:
    for step in range(1, steps + 1):
        if progress is not None:
            progress(step)


def fail_on_rank(rank: int, progress=None) -> None:
    if os.environ["RANK"] == str(rank):
        raise EngineError("The stand-in stage failed.", "Nothing to do.")
    time.sleep(60)  # the other worker would wait for it at the next gradient sync


def crash(progress=None) -> None:
    raise ZeroDivisionError("division by zero")
