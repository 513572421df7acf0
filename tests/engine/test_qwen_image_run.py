"""A run's life: progress with ETA, previews every k steps, cancel between steps, notes for the user."""

from __future__ import annotations

import threading

import pytest
import torch

from engine.errors import Cancelled, SettingsError
from engine.pipelines.run_control import Progress, RunControl

SMALL = dict(width=64, height=48, steps=6, cfg=4.0, seed=3)


def test_progress_reports_every_step_with_eta(tiny_model):
    seen: list[Progress] = []
    tiny_model.generate("a circle", control=RunControl(on_progress=seen.append), **SMALL)
    assert [p.step for p in seen] == list(range(7)) and {p.total for p in seen} == {6}
    assert seen[-1].fraction == 1.0 and seen[-1].eta_s == 0.0
    assert seen[3].eta_s == pytest.approx(seen[3].elapsed_s / 3 * 3)


def test_preview_every_k_steps_shows_latent_sized_rgb(tiny_model):
    previews: list[tuple[int, list]] = []
    control = RunControl(on_preview=lambda step, images: previews.append((step, images)), preview_every=2)
    result = tiny_model.generate("a circle", control=control, count=2, **SMALL)
    assert [step for step, _ in previews] == [2, 4]  # the last step shows the real image instead
    for _, images in previews:
        assert len(images) == 2 and images[0].size == (64 // 8, 48 // 8) and images[0].mode == "RGB"
    assert len(result.images) == 2


def test_cancel_stops_within_one_step_and_model_stays_usable(tiny_model):
    reference = tiny_model.generate("a circle", **SMALL).pixels
    control = RunControl()
    steps_run: list[int] = []

    def cancel_after_two(progress: Progress) -> None:
        steps_run.append(progress.step)
        if progress.step == 2:
            control.cancel()

    control.on_progress = cancel_after_two
    with pytest.raises(Cancelled):
        tiny_model.generate("a circle", control=control, **SMALL)
    assert max(steps_run) == 2
    assert torch.equal(tiny_model.generate("a circle", **SMALL).pixels, reference)


def test_cancel_from_another_thread_ends_the_run(tiny_model):
    control = RunControl()
    started = threading.Event()
    control.on_progress = lambda progress: started.set()
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            tiny_model.generate("a circle", control=control, width=64, height=64, steps=200, cfg=4.0)
        except BaseException as error:  # the test inspects what ended the thread
            outcome.append(error)

    worker = threading.Thread(target=run)
    worker.start()
    assert started.wait(30)
    control.cancel()
    worker.join(30)
    assert not worker.is_alive() and isinstance(outcome[0], Cancelled)


def test_long_prompt_is_cut_at_1024_tokens_with_a_note(tiny_model):
    prompt = "red circle " * 700  # 1400 tokens
    result = tiny_model.generate(prompt, width=32, height=32, steps=2, cfg=1.0)
    assert "The prompt was longer than 1024 tokens and was cut there." in result.notes


def test_different_prompts_change_the_image_and_equal_prompts_do_not(tiny_model):
    first = tiny_model.generate("a red circle", **SMALL).pixels
    again = tiny_model.generate("a red circle", **SMALL).pixels
    other = tiny_model.generate("a blue square", **SMALL).pixels
    assert torch.equal(first, again)
    assert (first - other).abs().max() > 1e-3


def test_error_raised_if_one_step_with_terminal_stretch(tiny_model):
    with pytest.raises(SettingsError, match=r"Use more steps \(at least 2\)\.$"):
        tiny_model.generate("a circle", width=32, height=32, steps=1)
