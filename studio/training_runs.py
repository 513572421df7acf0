"""Training runs in a child process, and the reading of what a run writes.

The studio starts `python -m engine train --config run.toml` as a child process in its own process group, so
a crash in training (out of memory, a bug, a kill) never takes the page down, and Ctrl+C in the studio's
terminal reaches the studio only: on exit the studio asks the child to stop (atexit). The child reports
through files in its output folder, which the page reads on a timer:
  status.json   {"state", "step", "total", "loss", "eta_s", "message", "lora", "samples"}, written atomically
  loss.jsonl    one {"step", "loss", "lr", "elapsed_s"} per line, appended
  samples/      the sample images, named in status.json
  STOP          written by the studio: the trainer saves a checkpoint and the LoRA so far, then exits 0
One run at a time per studio. When a run ends with a LoRA it is copied into the LoRA folder, where the
generating tabs' pickers find it.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from engine.errors import EngineError, SettingsError
from engine.training.status import STATUS_FILE, RunStatus, read_status
from studio.config import StudioConfig
from studio.loras import LORA_SUFFIX, install_lora

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
ENGINE_TRAIN = (sys.executable, "-m", "engine", "train")
RUN_CONFIG = "run.toml"
LOSS_FILE = "loss.jsonl"
STOP_FILE = "STOP"
STDOUT_LOG = "trainer.out.log"
STDERR_LOG = "trainer.err.log"
CHECKPOINTS = "checkpoints"
STDERR_TAIL_LINES = 12
PLOT_LOG_LINES = 200
STOP_GRACE_S = 60.0  # on studio exit: how long the trainer may take to save before it is killed
RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class TrainingError(EngineError):
    """A run cannot start, resume or stop as asked."""


class RunState(str, Enum):
    STARTING = "starting"  # the child runs and has not reported yet (loading, caching)
    RUNNING = "running"
    STOPPING = "stopping"  # STOP written, the child is saving
    FINISHED = "finished"
    STOPPED = "stopped"
    FAILED = "failed"


ENDED = (RunState.FINISHED, RunState.STOPPED, RunState.FAILED)


@dataclass(frozen=True)
class RunSpec:
    """A run's settings, as written to run.toml (the engine's contract); checked field by field."""

    name: str
    dataset: Path
    out_dir: Path
    steps: int
    learning_rate: float
    rank: int
    resolution: int
    sample_every: int
    sample_prompts: tuple[str, ...]
    preset: str | None = None  # one of these two names the base model
    model: Path | None = None
    models_dir: Path | None = None  # where a hub preset's files are (the studio's --models-dir)
    trigger_word: str = ""
    alpha_mask: bool = False  # transparent pixels left out of the loss ([dataset] alpha_mask)
    alpha: float | None = None  # None: the rank, so the LoRA's scale is 1
    repeats: int = 1
    batch_size: int = 1
    checkpoint_every: int | None = None  # None: with every sample
    sample_steps: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not RUN_NAME.match(self.name):
            raise SettingsError(f"Run name must be 1 to 64 letters, digits, '.', '_' or '-', starting with a letter "
                                f"or digit; got {self.name!r}.", "It names the run's folder and its LoRA file.")
        if (self.preset is None) == (self.model is None):
            raise SettingsError("A run needs exactly one base model: a preset or a model folder.")
        for field, low in (("steps", 1), ("rank", 1), ("resolution", 16), ("sample_every", 1), ("repeats", 1),
                           ("batch_size", 1), ("sample_steps", 1), ("seed", 0)):
            value = getattr(self, field)
            if isinstance(value, float) and value.is_integer():
                value = int(value)
                object.__setattr__(self, field, value)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise SettingsError(f"{_label(field)} must be a whole number of at least {low}, got {value!r}.")
        if self.resolution % 16:
            raise SettingsError(f"Resolution must be a multiple of 16, got {self.resolution}.",
                                "The model works on 16-pixel patches.")
        if not isinstance(self.learning_rate, (int, float)) or not math.isfinite(self.learning_rate) \
                or not 0 < self.learning_rate < 1:
            raise SettingsError(f"Learning rate must be a number between 0 and 1, got {self.learning_rate!r}.",
                                "1e-4 is a common start for LoRA.")
        object.__setattr__(self, "sample_prompts", tuple(p.strip() for p in self.sample_prompts if p.strip()))
        if not self.sample_prompts:
            raise SettingsError("Sample prompts are empty.", "Write at least one prompt, one per line.")
        if not isinstance(self.alpha_mask, bool):
            raise SettingsError(f"Alpha mask must be on or off, got {self.alpha_mask!r}.")
        if self.alpha is None:
            object.__setattr__(self, "alpha", float(self.rank))
        if self.checkpoint_every is None:
            object.__setattr__(self, "checkpoint_every", self.sample_every)

    @property
    def lora_path(self) -> Path:
        return self.out_dir / f"{self.name}{LORA_SUFFIX}"

    @property
    def log_every(self) -> int:
        """About PLOT_LOG_LINES loss lines per run: a live plot for short runs, no flood of lines for long ones."""
        return max(1, self.steps // PLOT_LOG_LINES)

    def tables(self) -> dict[str, dict[str, Any]]:
        """run.toml's sections; paths absolute, since the trainer runs from the repository root."""
        model = {"preset": self.preset} if self.preset is not None else {"model": str(Path(self.model).resolve())}
        if self.models_dir is not None:
            model["models_dir"] = str(Path(self.models_dir).resolve())
        train = {"mode": "lora", "steps": self.steps, "batch_size": self.batch_size,
                 "learning_rate": float(self.learning_rate), "rank": self.rank, "alpha": float(self.alpha),
                 "checkpoint_every": self.checkpoint_every, "log_every": self.log_every,
                 "sample_every": self.sample_every,
                 "sample_prompts": list(self.sample_prompts), "sample_steps": self.sample_steps, "seed": self.seed}
        if self.trigger_word.strip():
            train["trigger_word"] = self.trigger_word.strip()
        return {"model": model,
                "dataset": {"path": str(Path(self.dataset).resolve()), "resolution": self.resolution,
                            "repeats": self.repeats, "alpha_mask": self.alpha_mask},
                "train": train,
                "output": {"dir": str(Path(self.out_dir).resolve()), "name": self.name}}


def _label(field: str) -> str:
    return field.replace("_", " ").capitalize()


def toml_text(tables: dict[str, dict[str, Any]]) -> str:
    """TOML for tables of strings, numbers, booleans and lists of them (all run.toml holds)."""
    lines = []
    for section, values in tables.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in values.items())
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"TOML has no value for {value}")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


@dataclass(frozen=True)
class LossPoint:
    step: int
    loss: float
    lr: float
    elapsed_s: float


class LossReader:
    """Reads loss.jsonl as it grows: only the new bytes on each call, a half-written last line left for later."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.points: list[LossPoint] = []
        self._offset = 0
        self._lock = threading.Lock()

    def read(self) -> tuple[LossPoint, ...]:
        with self._lock:
            try:
                with self.path.open("rb") as file:
                    file.seek(self._offset)
                    chunk = file.read()
            except FileNotFoundError:
                return tuple(self.points)
            complete = chunk[:chunk.rfind(b"\n") + 1]
            self._offset += len(complete)
            for line in complete.decode("utf-8", errors="replace").splitlines():
                point = _loss_point(line)
                if point is not None:
                    self.points.append(point)
            return tuple(self.points)


def _loss_point(line: str) -> LossPoint | None:
    try:
        data = json.loads(line)
        return LossPoint(int(data["step"]), float(data["loss"]), float(data.get("lr") or 0.0),
                         float(data.get("elapsed_s") or 0.0))
    except (ValueError, KeyError, TypeError):
        return None  # a blank or foreign line does not end the plot


@dataclass(frozen=True)
class RunView:
    """What the page shows of a run, read at one moment."""

    name: str
    out_dir: Path
    state: RunState
    step: int
    total: int
    loss: float | None
    eta_s: float | None
    message: str
    losses: tuple[LossPoint, ...]
    samples: tuple[Path, ...]  # oldest first
    lora: Path | None  # in the LoRA folder, once installed
    stderr_tail: str  # the trainer's last stderr lines, when it failed

    @property
    def active(self) -> bool:
        return self.state not in ENDED


@dataclass(frozen=True)
class _RunFiles:
    """What the runner needs of a run's settings: its name, its folder, its length."""

    name: str
    out_dir: Path
    steps: int

    @property
    def lora_path(self) -> Path:
        return self.out_dir / f"{self.name}{LORA_SUFFIX}"


class _Run:
    """One child process and what the studio knows of it."""

    def __init__(self, spec: _RunFiles, process: subprocess.Popen):
        self.spec, self.process = spec, process
        self.losses = LossReader(spec.out_dir / LOSS_FILE)
        self.stop_requested = False
        self.installed: Path | None = None
        self.install_error = ""
        self.ended = threading.Event()


class TrainingRunner:
    """Starts, stops and reads the studio's one training run."""

    def __init__(self, config: StudioConfig, command: Sequence[str] = ENGINE_TRAIN, cwd: Path = REPO_ROOT):
        self.config = config
        self.command = tuple(command)
        self.cwd = Path(cwd)
        self._lock = threading.Lock()
        self._run: _Run | None = None
        self._exit_hook = False

    def run_dir(self, name: str) -> Path:
        return (Path(self.config.training_dir) / name).resolve()

    def start(self, spec: RunSpec) -> RunView:
        """Start a new run; refused while another runs, or when the name is taken by a run or a LoRA."""
        with self._lock:
            self.ensure_idle()
            if _has_checkpoint(spec.out_dir):  # a folder whose run never got that far is started afresh
                raise TrainingError(f"A run named '{spec.name}' already exists in {spec.out_dir}.",
                                    "Resume it, or pick another run name.")
            installed = Path(self.config.loras_dir) / f"{spec.name}{LORA_SUFFIX}"
            if installed.exists():
                raise TrainingError(f"A LoRA named '{spec.name}' is already in {self.config.loras_dir}.",
                                    "Pick another run name, so that it is not replaced.")
            spec.out_dir.mkdir(parents=True, exist_ok=True)
            (spec.out_dir / RUN_CONFIG).write_text(toml_text(spec.tables()), encoding="utf-8")
            return self._launch(_RunFiles(spec.name, spec.out_dir, spec.steps), resume=False)

    def resume(self, name: str) -> RunView:
        """Start the named run again from its newest checkpoint, with the settings it was started with."""
        with self._lock:
            self.ensure_idle()
            out_dir = self.run_dir(name) if RUN_NAME.match(name or "") else None
            if out_dir is None or not (out_dir / RUN_CONFIG).is_file():
                raise TrainingError(f"There is no run named '{name}' to resume in {self.config.training_dir}.",
                                    "Check the run name, or start a new run.")
            status = read_status(out_dir)
            if status is not None and status.state == RunState.FINISHED.value:
                raise TrainingError(f"The run '{name}' has finished all its {status.total} steps.",
                                    "Start a new run to train longer.")
            if not _has_checkpoint(out_dir):
                raise TrainingError(f"The run '{name}' has no checkpoint to resume from.", "Start it again instead.")
            from engine.training.run_config import read_run_config

            saved = read_run_config(out_dir / RUN_CONFIG)  # a hand-edited file is refused here, in words
            return self._launch(_RunFiles(name, out_dir, saved.train.steps), resume=True)

    def stop(self) -> bool:
        """Ask the running trainer to save and stop (it exits on its own); False when nothing runs."""
        with self._lock:
            run = self._run
            if run is None or run.ended.is_set():
                return False
            (run.spec.out_dir / STOP_FILE).touch()
            # The signal too: it reaches a trainer still loading, before it reads (and clears) the STOP file. Once its
            # handler is in, both mean the same; before that, there is nothing to save and the child just ends.
            self._signal(run, signal.SIGTERM)
            run.stop_requested = True
            logger.info("Asked training run %s to stop", run.spec.name)
            return True

    def view(self) -> RunView | None:
        """The current run, or the last one this studio ran; None before the first."""
        run = self._run
        return None if run is None else self._view(run)

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until the current run has ended and its LoRA is installed; False on timeout."""
        run = self._run
        return True if run is None else run.ended.wait(timeout_s)

    def shutdown(self, grace_s: float = STOP_GRACE_S) -> None:
        """Stop the child when the studio exits: SIGTERM (the trainer saves and stops), then SIGKILL after grace_s."""
        run = self._run
        if run is None or run.process.poll() is not None:
            return
        logger.info("Studio exiting: stopping training run %s", run.spec.name)
        self._signal(run, signal.SIGTERM)
        try:
            run.process.wait(grace_s)
        except subprocess.TimeoutExpired:
            logger.warning("Training run %s did not stop in %.0f s; killing it", run.spec.name, grace_s)
            self._signal(run, signal.SIGKILL)
            run.process.wait()
        run.ended.wait(5)

    def ensure_idle(self) -> None:
        """TrainingError naming the run that is going, if one is."""
        run = self._run
        if run is not None and not run.ended.is_set():
            view = self._view(run)
            where = view.state.value if view.state is RunState.STARTING else f"step {view.step} of {view.total}"
            raise TrainingError(f"A training run is already going: '{run.spec.name}' ({where}).",
                                "Stop it first, or wait until it ends.")

    def _launch(self, spec: _RunFiles, resume: bool) -> RunView:
        # A STOP left by a crash would end the run at once; a fresh start's plot begins empty.
        for stale in (STOP_FILE, STATUS_FILE) if resume else (STOP_FILE, STATUS_FILE, LOSS_FILE):
            (spec.out_dir / stale).unlink(missing_ok=True)
        argv = [*self.command, "--config", str(spec.out_dir / RUN_CONFIG)] + (["--resume"] if resume else [])
        with (spec.out_dir / STDOUT_LOG).open("ab") as out, (spec.out_dir / STDERR_LOG).open("wb") as err:
            process = subprocess.Popen(argv, cwd=self.cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                       env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
        run = _Run(spec, process)
        self._run = run
        if not self._exit_hook:
            atexit.register(self.shutdown)
            self._exit_hook = True
        threading.Thread(target=self._watch, args=(run,), name=f"train-{spec.name}", daemon=True).start()
        logger.info("Training run %s %s (pid %d): %s", spec.name, "resumed" if resume else "started", process.pid,
                    " ".join(argv))
        return self._view(run)

    def _watch(self, run: _Run) -> None:
        """Wait for the child to end; then put its LoRA in the LoRA folder."""
        code = run.process.wait()
        try:
            status = read_status(run.spec.out_dir)
            if code == 0 and status is not None and status.state in (RunState.FINISHED.value, RunState.STOPPED.value):
                lora = Path(status.lora) if status.lora else run.spec.lora_path
                if not lora.is_absolute():
                    lora = run.spec.out_dir / lora
                if lora.is_file():
                    run.installed = install_lora(lora, self.config, run.spec.name)
            logger.info("Training run %s ended with exit code %d", run.spec.name, code)
        except OSError as error:
            run.install_error = f"The LoRA could not be copied into {self.config.loras_dir}: {error}."
            logger.exception("Installing the LoRA of run %s failed", run.spec.name)
        finally:
            run.ended.set()

    def _view(self, run: _Run) -> RunView:
        spec = run.spec
        ended = run.ended.is_set()  # before the exit code: once ended, the code is known
        code = run.process.poll()
        status = read_status(spec.out_dir)
        state, message = _state(status, code, ended, run.stop_requested)
        tail = _tail(spec.out_dir / STDERR_LOG) if state is RunState.FAILED else ""
        if run.install_error:
            message = f"{message} {run.install_error}".strip()
        samples = tuple(spec.out_dir / item for item in status.samples) if status else ()
        return RunView(name=spec.name, out_dir=spec.out_dir, state=state, step=status.step if status else 0,
                       total=status.total if status else spec.steps, loss=status.loss if status else None,
                       eta_s=status.eta_s if status and not ended else None, message=message,
                       losses=run.losses.read(), samples=tuple(path for path in samples if path.is_file()),
                       lora=run.installed, stderr_tail=tail)

    @staticmethod
    def _signal(run: _Run, number: signal.Signals) -> None:
        try:
            os.killpg(run.process.pid, number)  # the child leads its own group: its workers get it too
        except ProcessLookupError:
            pass


def _state(status: RunStatus | None, code: int | None, ended: bool, stop_requested: bool) -> tuple[RunState, str]:
    """The run's state and message, from its status file and its process's exit code."""
    reported = status.state.value if status else ""
    message = status.message if status else ""
    if not ended:  # running, or saying it is done while it exits and its LoRA is copied: running until then
        if stop_requested:
            return RunState.STOPPING, message
        return (RunState.STARTING if status is None else RunState.RUNNING), message
    if code == 0 and reported in (RunState.FINISHED.value, RunState.STOPPED.value):
        return RunState(reported), message
    if stop_requested and code == -signal.SIGTERM:
        return RunState.STOPPED, "Stopped before the first checkpoint: nothing was saved."
    if reported == RunState.FAILED.value and message:
        return RunState.FAILED, message
    if code == 0:
        return RunState.FAILED, "The trainer exited without saying that it finished."
    how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
    return RunState.FAILED, f"The trainer {how}."


def _has_checkpoint(out_dir: Path) -> bool:
    checkpoints = out_dir / CHECKPOINTS
    return checkpoints.is_dir() and any(checkpoints.iterdir())


def _tail(path: Path, lines: int = STDERR_TAIL_LINES) -> str:
    try:
        with path.open("rb") as file:
            file.seek(0, os.SEEK_END)
            file.seek(max(0, file.tell() - 16_384))
            text = file.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])
