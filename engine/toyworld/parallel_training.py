"""Train the tiny-shapes transformer in several CPU processes at once, each on its share of every batch.

A model this small (3.7M parameters, about 100 tokens an image) keeps a core busy with one thread, while two
threads in one process lose time waiting for each other across the thousands of small operations of a step.
Measured back to back on the 2-core build machine, 60 steps of the shipped recipe (batch 64): 0.85 s a step in
one process with two threads, 0.72 s in two processes with one thread each (gloo, gradients averaged every
step). engine.training.loop already makes n processes with batch b train as one with batch n*b (same draws,
same checkpoints, weights equal to float rounding), so only the wall time changes.

The workers are started with the spawn method and rendezvous on a free port of 127.0.0.1; the first one sends
its progress reports and any error back to the parent through a queue.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import socket
import threading
import traceback
from collections.abc import Callable
from dataclasses import replace

from engine.errors import EngineError

Report = Callable[[object], None]
RESUME_HINT = "Run again with --resume to continue from the last checkpoint."
# Polls (0.5 s each) that a worker which died gets for its error report to arrive before it is called silent.
_SILENT_POLLS = 4


class ParallelTrainingError(EngineError):
    """A worker process of the transformer's training failed."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _exit_with_parent() -> None:
    """End this worker when the build process that started it ends, however it ended (a kill skips the
    parent's clean-up, and an orphaned worker would go on writing checkpoints into the work folder)."""
    from multiprocessing.connection import wait

    parent = multiprocessing.parent_process()

    def watch() -> None:
        wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _worker(rank: int, processes: int, port: int, train_stage: Callable, arguments: tuple, reports) -> None:
    _exit_with_parent()
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(processes),
                       "LOCAL_WORLD_SIZE": str(processes), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    import torch

    torch.set_num_threads(1)
    try:
        train_stage(*arguments, progress=(lambda report: reports.put(("progress", report))) if rank == 0 else None)
    except EngineError as error:  # its message says what to do already
        reports.put(("error", (f"worker {rank}: {error}", "")))
        raise SystemExit(1) from None
    except BaseException as error:  # noqa: BLE001 (the parent raises it as a ParallelTrainingError)
        traceback.print_exc()
        reports.put(("error", (f"worker {rank}: {type(error).__name__}: {error} (traceback above)", RESUME_HINT)))
        raise SystemExit(1) from None


def train_in_processes(processes: int, train_stage: Callable, arguments: tuple, progress: Report) -> None:
    """Run train_stage(*arguments, progress=...) in `processes` spawned workers, as torchrun would.

    train_stage must be a module-level function (spawn imports it by name) that builds its model and calls
    engine.training.loop.train; `progress` receives the first worker's reports in this process. When a worker
    fails, the others are stopped (they would wait for it at the next gradient sync) and its error is raised.
    """
    context = multiprocessing.get_context("spawn")
    reports = context.Queue()
    port = _free_port()
    workers = [context.Process(target=_worker, args=(rank, processes, port, train_stage, arguments, reports),
                               daemon=True) for rank in range(processes)]
    for worker in workers:
        worker.start()
    error: tuple[str, str] | None = None  # (what happened, what to do)
    all_done = False
    polls_since_a_death = 0
    try:
        while error is None:
            try:
                kind, payload = reports.get(timeout=0.5)
            except queue.Empty:
                codes = [worker.exitcode for worker in workers]
                if all(code == 0 for code in codes):
                    all_done = True
                    break
                if any(code not in (None, 0) for code in codes):
                    polls_since_a_death += 1  # killed or out of memory, unless its report is still on the way
                    if polls_since_a_death > _SILENT_POLLS:
                        error = (f"a worker ended without reporting why (exit codes {codes})", RESUME_HINT)
                continue
            if kind == "progress":
                progress(payload)
            else:
                error = payload
    finally:
        for worker in workers:
            if not all_done and worker.is_alive():
                worker.terminate()
            worker.join()
    if error is not None:
        raise ParallelTrainingError(f"Training the transformer in {processes} processes failed: {error[0]}",
                                    error[1])


def per_process_config(config, processes: int):
    """The TrainConfig each of `processes` workers runs so that together they train `config`'s global batch
    (ValueError when the batch does not split evenly)."""
    if config.batch_size % processes:
        raise ValueError(f"batch_size: {config.batch_size} does not split evenly over {processes} processes")
    return replace(config, batch_size=config.batch_size // processes)

