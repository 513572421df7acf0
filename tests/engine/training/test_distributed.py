"""Two CPU processes (torchrun, gloo) train one LoRA through `python -m engine train`: each process takes its
own half of every batch, both end with the same weights, and the LoRA equals one process with twice the batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from engine.training.run import run_from_file
from tests.engine.training.conftest import write_config

WORKER = Path(__file__).with_name("two_process_worker.py")
ROOT = Path(__file__).resolve().parents[3]


def test_two_processes_split_each_batch_and_learn_what_one_process_with_twice_the_batch_learns(
        tiny_qwen_dir, dataset, tmp_path):
    two = write_config(tmp_path / "two", tiny_qwen_dir, dataset, steps=3, batch_size=2, checkpoint_every=3)
    record = tmp_path / "record"
    record.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    completed = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER),
         str(two), str(record)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]

    picks = [json.loads((record / f"rank-{rank}.json").read_text()) for rank in range(2)]
    assert [pick["processes"] for pick in picks[0] + picks[1]] == [2] * 6
    for first, second in zip(*picks):
        assert first["step"] == second["step"] and (first["process"], second["process"]) == (0, 1)
        assert not set(first["positions"]) & set(second["positions"])  # different examples on each process
    ranks = [load_file(record / f"rank-{rank}.safetensors") for rank in range(2)]
    assert all(torch.equal(ranks[0][key], ranks[1][key]) for key in ranks[0])  # gradients were synced

    one = write_config(tmp_path / "one", tiny_qwen_dir, dataset, steps=3, batch_size=4, checkpoint_every=3)
    run_from_file(one)
    expected = load_file(tmp_path / "one/out/run.safetensors")
    got = load_file(tmp_path / "two/out/run.safetensors")
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-5)
    state = json.loads((tmp_path / "two/out/checkpoints/step-0000003/state.json").read_text())
    assert state["state"]["processes"] == 2
