"""Running jobs: one worker per device, the loaded model, and Cancel.

Gradio's queue orders the jobs (every event that uses the device shares CONCURRENCY_ID, limit 1); the
worker here makes "one job on the device at a time" hold even when Gradio lets the next job start while a
cancelled one is still finishing its step. A job runs on its own thread so the event handler can stream its
progress and previews; Cancel reaches it through the RunControl registered under the browser session.
The model cache keeps one model loaded: switching preset frees the old one first, since two real models
rarely fit a machine at once.
"""

from __future__ import annotations

import gc
import logging
import os
import queue
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from PIL import Image

from engine.pipelines.run_control import Progress, RunControl
from engine.presets import Preset
from engine.settings import GenerateSettings

logger = logging.getLogger(__name__)

CONCURRENCY_ID = "device"  # every event that runs a model uses this Gradio concurrency group


class Stage(str, Enum):
    WAITING = "waiting"  # for the previous job to leave the device
    LOADING = "loading"  # the preset's model, on its first job
    DENOISING = "denoising"


@dataclass(frozen=True)
class Job:
    session: str  # the browser session that asked, so its Cancel finds this job
    preset: Preset
    settings: GenerateSettings
    input_image: str | Image.Image | None = None  # image-to-image: a path or an image


@dataclass(frozen=True)
class Update:
    """The latest news of a running job; the handler shows it and yields it to the page."""

    stage: Stage
    progress: Progress | None = None
    preview: Image.Image | None = None


class ModelCache:
    """The one loaded model, keyed by its preset. The caller holds the device."""

    def __init__(self, models_dir: Path, device: str | None = None):
        self.models_dir = Path(models_dir)
        self.device = device
        self._preset: Preset | None = None
        self._model: Any = None

    def holds(self, preset: Preset) -> bool:
        return self._model is not None and self._preset == preset

    def model(self, preset: Preset) -> Any:
        """The engine Model for `preset`, loading it (and freeing another) when needed."""
        if self.holds(preset):
            return self._model
        self.release()
        # torch and diffusers take seconds to import: only when a job needs them
        from engine import api

        logger.info("Loading %s", preset.name)
        self._model = api.load(preset, models_dir=self.models_dir, device=self.device)
        self._preset = preset
        if self._model.modules.device.type == "cpu":
            _share_the_cpu()
        return self._model

    def release(self) -> None:
        self._model = self._preset = None
        gc.collect()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()


def _share_the_cpu() -> None:
    """Leave one core to the web server and the browser: torch's threads spin while they wait for each other,
    and one core taken by anything else then slows a run many times over (measured: 0.35 s with 1 thread,
    13-35 s with 2, on 2 cores with another process busy)."""
    import torch

    threads = max(1, (os.cpu_count() or 1) - 1)
    if torch.get_num_threads() > threads:
        logger.info("Running on the CPU with %d thread(s), leaving a core to the page", threads)
        torch.set_num_threads(threads)


@dataclass
class Run:
    """One job in flight: its control (cancel), its news, and in the end its result or error."""

    job: Job
    control: RunControl
    _news: queue.Queue = field(default_factory=queue.Queue)
    _done: threading.Event = field(default_factory=threading.Event)
    _result: Any = None
    _error: BaseException | None = None

    def post(self, update: Update) -> None:
        self._news.put(update)

    def updates(self, poll_s: float = 0.1) -> Iterator[Update]:
        """The news until the job ends. What arrives between two polls is merged into one update (the latest
        stage, progress and preview), since a page cannot show more than a few per second."""
        progress = None
        while True:
            finished = self._done.wait(poll_s)
            latest: Update | None = None
            preview = None
            while not self._news.empty():
                latest = self._news.get_nowait()
                progress = latest.progress or progress
                preview = latest.preview or preview
            if latest is not None:
                yield Update(latest.stage, progress if latest.stage is Stage.DENOISING else None, preview)
            if finished:
                return

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until the job has ended; False on timeout."""
        return self._done.wait(timeout_s)

    def result(self) -> Any:
        """The engine's GenerationResult, or the job's error raised here."""
        self._done.wait()
        if self._error is not None:
            raise self._error
        return self._result

    def _finish(self, result: Any = None, error: BaseException | None = None) -> None:
        self._result, self._error = result, error
        self._done.set()


class Worker:
    """Runs jobs on one device, one at a time, and cancels them by session."""

    def __init__(self, cache: ModelCache, preview_every: int = 1):
        self.cache = cache
        self.preview_every = preview_every
        self._device = threading.Lock()
        self._registry = threading.Lock()
        self._runs: dict[str, list[Run]] = {}
        self._warming: threading.Thread | None = None

    def start(self, job: Job) -> Run:
        """Start the job on its own thread; its news and result come through the returned Run."""
        run = Run(job, RunControl(preview_every=self.preview_every))
        run.control.on_progress = lambda progress: run.post(Update(Stage.DENOISING, progress))
        run.control.on_preview = lambda step, images: run.post(Update(Stage.DENOISING, preview=images[0]))
        with self._registry:
            self._runs.setdefault(job.session, []).append(run)
        threading.Thread(target=self._execute, args=(run,), name=f"job-{job.session[:8]}", daemon=True).start()
        return run

    def cancel(self, session: str, wait_s: float = 30.0) -> int:
        """Stop the session's jobs at their next step and wait (up to wait_s) until they have; how many."""
        with self._registry:
            runs = list(self._runs.get(session, ()))
        for run in runs:
            run.control.cancel()
        for run in runs:
            if not run.wait(wait_s):
                logger.warning("A cancelled job of session %s is still running after %.0f s", session[:8], wait_s)
        return len(runs)

    def warm_up(self) -> None:
        """Import the engine's heavy half (torch, diffusers: seconds) in the background, once: called when a page
        has loaded, so the import neither delays the page nor the first click."""
        with self._registry:
            if self._warming is None:
                self._warming = threading.Thread(target=_import_engine, name="warm-up", daemon=True)
                self._warming.start()

    def _execute(self, run: Run) -> None:
        try:
            if self._device.locked():
                run.post(Update(Stage.WAITING))
            with self._device:
                run.control.check_cancelled()
                if not self.cache.holds(run.job.preset):
                    run.post(Update(Stage.LOADING))
                    # diffusers' lazy module breaks when two threads import its classes at once: let the warm-up end.
                    warming = self._warming
                    if warming is not None:
                        warming.join()
                model = self.cache.model(run.job.preset)
                result = model.generate(run.job.settings, input_image=run.job.input_image, control=run.control)
            run._finish(result)
        except BaseException as error:  # handed to the event handler, which shows it
            run._finish(error=error)
        finally:
            with self._registry:
                left = [other for other in self._runs.get(run.job.session, []) if other is not run]
                if left:
                    self._runs[run.job.session] = left
                else:
                    self._runs.pop(run.job.session, None)


def _import_engine() -> None:
    from engine import api

    api.warm_up()
    logger.info("Engine imported; ready to load models")
