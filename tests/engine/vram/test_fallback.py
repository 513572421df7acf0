"""Out of memory in a job (forced from a hook): the model plans again with less, retries at most three times,
says what changed, and gives the same pixels; after three retries a clear EngineError, and the model still
works."""

from __future__ import annotations

import pytest
import torch

from engine.errors import EngineError
from engine.vram import planner
from engine.vram.fallback import MAX_RETRIES, OutOfMemory, is_out_of_memory
from engine.vram.vocabulary import DeviceKind, Mode, Precision
from engine.vram.workload import Workload
from tests.engine.vram.conftest import SETTINGS, load_with


class FailingTransformer:
    """A global forward pre-hook that raises CUDA's out-of-memory error in the transformer's first `times` calls."""

    def __init__(self, times: int):
        from diffusers import QwenImageTransformer2DModel

        self.left, self.calls = times, 0
        self._class = QwenImageTransformer2DModel

    def __call__(self, module, _args):
        if isinstance(module, self._class):
            self.calls += 1
            if self.left > 0:
                self.left -= 1
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    def __enter__(self):
        self._handle = torch.nn.modules.module.register_module_forward_pre_hook(self)
        return self

    def __exit__(self, *_):
        self._handle.remove()


@pytest.fixture()
def tight_model(split_parts):
    """The split model planned with no reserve and a little more memory than the all-resident plan needs, so that
    each smaller budget changes the placement (the tiny model's sizes are megabytes, not gigabytes)."""
    sizes, workload = split_parts[2], Workload(64, 64)
    roomy = planner.plan(sizes, workload, planner.Budget(DeviceKind.CPU, 2**30, compute=Precision.FP32, reserve=0),
                         Mode.STREAM)
    budget = planner.Budget(DeviceKind.CPU, int(roomy.peak_device * 1.3), compute=Precision.FP32, reserve=0)
    return load_with(split_parts, planner.plan(sizes, workload, budget, Mode.STREAM))


def test_retries_with_smaller_plans_and_says_what_changed_when_out_of_memory_twice(tight_model, split_parts,
                                                                                    resident_plan):
    reference = load_with(split_parts, resident_plan).generate("a red circle", **SETTINGS).pixels
    before = tight_model.plan
    with FailingTransformer(times=2) as failing:
        result = tight_model.generate("a red circle", **SETTINGS)
    assert failing.left == 0
    retries = [note for note in result.notes if note.startswith("Out of memory; retried with a smaller plan")]
    assert len(retries) == 2 and all("budget" in note for note in retries)
    assert "parked between phases" in " ".join(retries)  # what changed, in words
    assert result.plan is tight_model.plan and result.plan.budget.device_bytes < before.budget.device_bytes
    assert result.plan.components != before.components
    assert torch.equal(result.pixels, reference)


def test_error_raised_if_still_out_of_memory_after_three_retries_and_the_model_still_works(tight_model):
    with FailingTransformer(times=99) as failing, pytest.raises(OutOfMemory) as raised:
        tight_model.generate("a red circle", **SETTINGS)
    assert isinstance(raised.value, EngineError)
    assert failing.calls == MAX_RETRIES + 1
    assert "Out of memory" in str(raised.value) and "\n" not in str(raised.value)
    assert tight_model.generate("a red circle", **SETTINGS).pixels.shape == (1, 3, 64, 64)


def test_other_errors_are_not_retried(tight_model, monkeypatch):
    from engine.pipelines import qwen_image

    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise ValueError("a bug")

    monkeypatch.setattr(qwen_image, "guided_velocity", broken)
    with pytest.raises(ValueError, match="a bug"):
        tight_model.generate("a red circle", **SETTINGS)
    assert len(calls) == 1


def test_out_of_memory_recognised_in_its_forms():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"))
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 GB"))
    assert is_out_of_memory(MemoryError())
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
