"""Out of memory during a job: release what the failed run held, plan again with less memory, retry (at most
MAX_RETRIES times), and tell the user what changed. Whatever happens, the error that escapes is an EngineError
(OutOfMemory), so the studio shows a message and keeps running.

Before a run, a workload larger than the one the current plan was made for (a bigger size, a batch) gets a
new plan when the current one's estimate no longer fits.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import TypeVar

from engine.errors import EngineError
from engine.loading import QwenImageModules
from engine.vram import planner
from engine.vram.apply import PlannedModel
from engine.vram.explain import describe_change
from engine.vram.workload import Workload

logger = logging.getLogger(__name__)

MAX_RETRIES = 3
SHRINK = 0.75  # each retry plans for this share of the previous budget's device memory, down to the least that fits

T = TypeVar("T")


class OutOfMemory(EngineError):
    """A job ran out of memory and smaller plans did not help."""


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA's and MPS's out-of-memory errors, and the CPU allocator's."""
    import torch

    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and any(
        phrase in text for phrase in ("out of memory", "can't allocate memory", "Cannot allocate memory"))


def run_with_fallback(model: PlannedModel, workload: Workload,
                      job: Callable[[QwenImageModules], T]) -> tuple[T, list[str]]:
    """job(modules) under the model's plan, planning again with less memory after each out-of-memory error;
    the result and notes for the user saying what changed."""
    notes = [note for note in [_fit_workload(model, workload)] if note]
    for attempt in range(MAX_RETRIES + 1):
        try:
            return job(model.modules), notes
        except Exception as error:  # noqa: BLE001 - anything but running out of memory is re-raised at once
            if not is_out_of_memory(error):
                raise
            failure = _first_line(error)
        # Out of the except block, the error's traceback (and the tensors its frames hold) is gone.
        model.release()
        old = model.plan
        if attempt == MAX_RETRIES:
            raise OutOfMemory(
                f"Out of memory {MAX_RETRIES + 1} times, the last time with this plan: {old.explanation}",
                "Lower the size or the batch, close other programs using the GPU, or set a lower VRAM limit.")
        smallest = planner.smallest_budget(model.sizes, workload, old.budget, old.mode)
        device_bytes = max(int(old.budget.device_bytes * SHRINK), smallest or old.budget.device_bytes)
        if device_bytes >= old.budget.device_bytes:
            raise OutOfMemory(f"Out of memory ({failure}) with the smallest plan there is: {old.explanation}",
                              "Lower the size or the batch, or close other programs using the GPU.")
        new = planner.plan(model.sizes, workload, replace(old.budget, device_bytes=device_bytes), old.mode)
        model.move_to(new)
        note = f"Out of memory; retried with a smaller plan: {describe_change(old, new)}."
        logger.warning(note)
        notes.append(note)
    raise AssertionError("unreachable")


def _fit_workload(model: PlannedModel, workload: Workload) -> str:
    """Plan again before the run when the current plan's estimate does not fit `workload`; a note if so."""
    old = model.plan
    if planner.fits(old, model.sizes, workload):
        return ""
    new = planner.plan(model.sizes, workload, old.budget, old.mode)
    model.move_to(new)
    return f"{workload.label} needs another plan than {old.workload.label}: {describe_change(old, new)}."


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
