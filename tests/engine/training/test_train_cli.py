"""`python -m engine train`: progress on stdout, exit 0; bad input exits 2 with one line on stderr, and the
run's status.json says "failed" with the same message once the output folder is known."""

from __future__ import annotations

from engine.cli import main
from engine.training.status import read_status
from tests.engine.training.conftest import write_config


def test_train_prints_progress_and_exits_0(tiny_qwen_dir, dataset, tmp_path, capsys):
    path = write_config(tmp_path, tiny_qwen_dir, dataset, steps=2)
    assert main(["train", "--config", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"dataset: 8 images from {dataset}, buckets 64x64 (8)"
    assert any(line.startswith("step 2/2  loss ") for line in out)
    assert out[-2:] == [f"LoRA written to {tmp_path / 'out' / 'run.safetensors'}", "finished 2 steps"]


def test_bad_input_exits_2_with_one_line_and_a_failed_status(tiny_qwen_dir, tmp_path, capsys):
    path = write_config(tmp_path, tiny_qwen_dir, tmp_path / "absent")
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: The dataset folder {tmp_path / 'absent'} does not exist.\n"
    status = read_status(tmp_path / "out")
    assert status.state.value == "failed"
    assert status.message == f"The dataset folder {tmp_path / 'absent'} does not exist."


def test_a_bad_run_config_exits_2_naming_the_key(tmp_path, capsys):
    path = tmp_path / "run.toml"
    path.write_text("[dataset]\npath = 'x'\n[train]\nsteps = -1\n[output]\ndir = 'out'\n")
    assert main(["train", "--config", str(path)]) == 2
    assert capsys.readouterr().err == f"error: {path}: [train] steps must be at least 1, got -1.\n"
