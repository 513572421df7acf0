"""engine/toyworld/parallel_training.py: workers that report through the parent, fail loudly, and never outlive it.
(That two workers train what one process trains, to float rounding, is tested on the real stage in test_build.py.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.toyworld.parallel_training import ParallelTrainingError, per_process_config, train_in_processes
from engine.training.config import TrainConfig
from tests.engine.toyworld import parallel_stages

ROOT = Path(__file__).resolve().parents[3]


def test_the_first_workers_progress_reaches_the_parent_in_order():
    seen: list[int] = []
    train_in_processes(2, parallel_stages.report_steps, (5,), seen.append)
    assert seen == [1, 2, 3, 4, 5]


def test_an_engine_error_in_one_worker_stops_the_others_and_is_raised_with_its_words():
    began = time.monotonic()
    with pytest.raises(ParallelTrainingError) as raised:
        train_in_processes(2, parallel_stages.fail_on_rank, (1,), lambda report: None)
    assert str(raised.value) == ("Training the transformer in 2 processes failed: worker 1: The stand-in stage "
                                 "failed. Nothing to do.")
    assert time.monotonic() - began < 45  # the sleeping worker was stopped, not waited for


def test_any_other_error_names_its_type_and_how_to_continue():
    with pytest.raises(ParallelTrainingError) as raised:
        train_in_processes(2, parallel_stages.crash, (), lambda report: None)
    assert str(raised.value) in {
        f"Training the transformer in 2 processes failed: worker {rank}: ZeroDivisionError: division by zero "
        "(traceback above) Run again with --resume to continue from the last checkpoint." for rank in (0, 1)}


def test_workers_end_when_the_build_process_is_killed(tmp_path):
    script = ("import sys\n"
              "from engine.toyworld.parallel_training import train_in_processes\n"
              "from tests.engine.toyworld import parallel_stages\n"
              "if __name__ == '__main__':\n"
              f"    train_in_processes(2, parallel_stages.record_pid_and_wait, ({str(tmp_path)!r}, 120), print)\n")
    (tmp_path / "build.py").write_text(script)
    parent = subprocess.Popen([sys.executable, str(tmp_path / "build.py")], cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 60
        while len(list(tmp_path.glob("worker-*.pid"))) < 2:
            assert time.monotonic() < deadline and parent.poll() is None, "the workers did not start"
            time.sleep(0.2)
        workers = [int(path.read_text()) for path in tmp_path.glob("worker-*.pid")]
        parent.send_signal(signal.SIGKILL)  # no clean-up runs in the parent
        parent.wait()
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [pid for pid in workers if _alive(pid)] == []
    finally:
        parent.kill()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/stat")
    return status.exists() and status.read_text().split(")")[-1].split()[0] != "Z"  # a zombie has ended


def test_the_global_batch_is_shared_evenly_or_refused():
    assert per_process_config(TrainConfig(steps=10, batch_size=64), 2).batch_size == 32
    with pytest.raises(ValueError, match="^batch_size: 63 does not split evenly over 2 processes$"):
        per_process_config(TrainConfig(steps=10, batch_size=63), 2)
