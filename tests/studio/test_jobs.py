"""The worker: one job on the device at a time, news while it runs, Cancel within a step, errors handed back."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from engine.errors import Cancelled, WeightsError
from engine.presets import Defaults, Family, Limits, Preset, Tab
from engine.settings import GenerateSettings
from studio.jobs import Job, Stage, Worker

STEP_S = 0.05
PRESET = Preset(name="fake", title="Fake", family=Family.QWEN_IMAGE, tabs=(Tab.TEXT_TO_IMAGE,),
                defaults=Defaults(64, 64, 4, 1.0), limits=Limits(), sizes=((64, 64),), components=(),
                folder=Path("."))


class FakeModel:
    """Steps like the engine's pipeline: report, preview, check Cancel before every step."""

    def __init__(self, log: list):
        self.log = log
        self.running = 0

    def generate(self, settings, input_image=None, control=None):
        self.running += 1
        self.log.append(("start", settings.prompt, self.running))
        try:
            control.start(settings.steps)
            for step in range(settings.steps):
                control.check_cancelled()
                time.sleep(STEP_S)
                control.report(step + 1, settings.steps)
                if control.wants_preview(step + 1, settings.steps):
                    control.on_preview(step + 1, [Image.new("RGB", (8, 8))])
            control.check_cancelled()
            return f"images of {settings.prompt}"
        finally:
            self.running -= 1
            self.log.append(("end", settings.prompt))


class FakeCache:
    def __init__(self, error: Exception | None = None):
        self.log: list = []
        self.loaded = None
        self.error = error
        self.model_ = FakeModel(self.log)

    def holds(self, preset):
        return self.loaded == preset

    def model(self, preset):
        if self.error:
            raise self.error
        if not self.holds(preset):
            time.sleep(STEP_S)  # loading takes a while
        self.loaded = preset
        return self.model_


def job(prompt: str = "a", steps: int = 4, session: str = "session-a") -> Job:
    return Job(session, PRESET, GenerateSettings(prompt=prompt, width=64, height=64, steps=steps, cfg=1.0))


def test_news_go_from_loading_to_every_step_then_the_result():
    run = Worker(FakeCache()).start(job(steps=4))
    updates = list(run.updates(poll_s=0.01))
    assert run.result() == "images of a"
    assert updates[0].stage is Stage.LOADING
    steps = [u.progress.step for u in updates if u.progress is not None]
    assert steps == sorted(steps) and steps[-1] == 4
    assert any(u.preview is not None for u in updates)


def test_second_job_of_a_preset_does_not_load_again():
    worker = Worker(FakeCache())
    worker.start(job()).result()
    updates = list(worker.start(job()).updates(poll_s=0.01))
    assert all(update.stage is not Stage.LOADING for update in updates)


def test_jobs_run_one_at_a_time_in_the_order_started():
    cache = FakeCache()
    worker = Worker(cache)
    runs = []
    for prompt in ("first", "second", "third"):
        runs.append(worker.start(job(prompt, steps=2, session=prompt)))
        time.sleep(0.02)  # the threads reach the device in the order started
    assert [run.result() for run in runs] == ["images of first", "images of second", "images of third"]
    assert [entry for entry in cache.log if entry[0] == "start"] == [
        ("start", "first", 1), ("start", "second", 1), ("start", "third", 1)]


def test_a_waiting_job_says_so():
    worker = Worker(FakeCache())
    worker.start(job(steps=6, session="x"))
    time.sleep(0.02)
    updates = list(worker.start(job(session="y")).updates(poll_s=0.005))
    assert updates[0].stage is Stage.WAITING


def test_cancel_stops_the_running_job_within_one_step_and_the_worker_runs_the_next():
    worker = Worker(FakeCache())
    run = worker.start(job(steps=200))
    time.sleep(5 * STEP_S)
    started = time.perf_counter()
    assert worker.cancel("session-a") == 1
    # Cancel returns once the job has stopped: a step or so, far from the ~9 s the job had left (slack for busy CI).
    assert time.perf_counter() - started < 20 * STEP_S
    with pytest.raises(Cancelled, match="nothing was saved"):
        run.result()
    assert worker.start(job("after", steps=2)).result() == "images of after"


def test_cancel_touches_only_its_own_session():
    worker = Worker(FakeCache())
    mine, theirs = worker.start(job(steps=8, session="mine")), worker.start(job(steps=2, session="theirs"))
    worker.cancel("mine")
    with pytest.raises(Cancelled):
        mine.result()
    assert theirs.result() == "images of a"


def test_cancel_with_nothing_running_says_none():
    assert Worker(FakeCache()).cancel("nobody") == 0


def test_a_failing_job_hands_its_error_back_and_the_worker_stays_usable():
    cache = FakeCache(error=WeightsError("broken weights"))
    worker = Worker(cache)
    with pytest.raises(WeightsError, match="broken weights"):
        worker.start(job()).result()
    cache.error = None
    assert worker.start(job("next")).result() == "images of next"


def test_updates_end_when_the_job_fails():
    run = Worker(FakeCache(error=WeightsError("x"))).start(job())
    done = threading.Event()
    threading.Thread(target=lambda: (list(run.updates(poll_s=0.01)), done.set())).start()
    assert done.wait(2)


def test_a_first_job_waits_for_the_warm_up_imports_before_loading(monkeypatch):
    order = []

    def slow_imports():
        time.sleep(0.2)
        order.append("imported")

    monkeypatch.setattr("studio.jobs._import_engine", slow_imports)
    cache = FakeCache()
    original = cache.model
    cache.model = lambda preset: (order.append("load"), original(preset))[1]
    worker = Worker(cache)
    worker.warm_up()
    worker.warm_up()  # once only
    assert worker.start(job()).result() == "images of a"
    assert order == ["imported", "load"]
