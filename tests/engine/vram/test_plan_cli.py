"""`python -m engine plan`: an answer for every preset, JSON with the peak, the components and the explanation;
one line and exit 2 for what cannot fit or makes no sense."""

from __future__ import annotations

import json

import pytest

from engine.cli import main
from engine.presets import preset_names


def run_cli(capsys, *arguments: str) -> tuple[int, str, str]:
    code = main([str(argument) for argument in arguments])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("preset", preset_names())
def test_plan_answers_for_every_preset(capsys, preset, tmp_path):
    code, out, _ = run_cli(capsys, "plan", "--preset", preset, "--vram", "12", "--ram", "64", "--models-dir", tmp_path)
    assert code == 0
    assert out.splitlines()[0].endswith(" GB.") and " on 12 GB: " in out.splitlines()[0]
    assert "peak VRAM by phase: encode" in out


def test_plan_json_has_peak_components_and_explanation(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "plan", "--preset", "qwen-image", "--vram", "8", "--ram", "32", "--width", "1024",
                           "--height", "1024", "--json", "--models-dir", tmp_path)
    assert code == 0
    data = json.loads(out)
    assert isinstance(data["peak_vram_gb"], float) and data["peak_vram_gb"] <= 8
    for component in ("transformer", "text_encoder", "vae"):
        assert {"placement", "dtype", "resident_blocks", "streamed_blocks"} <= set(data["components"][component])
    assert data["explanation"].startswith("Qwen-Image at 1024x1024 on 8 GB: transformer in fp8")
    assert data["preset"] == "qwen-image" and data["notes"]  # nominal sizes: the files are not on disk


def test_plan_reads_sizes_from_the_files_of_a_model_folder(capsys, tiny_qwen_dir):
    code, out, _ = run_cli(capsys, "plan", "--model", tiny_qwen_dir, "--ram", "4", "--device", "cpu", "--json")
    data = json.loads(out)
    assert code == 0 and not data["notes"]
    assert data["components"]["transformer"]["blocks"] == 2 and data["peak_vram_gb"] == 0.0
    assert "on the CPU with 4 GB RAM: transformer in RAM in float32" in data["explanation"]


def test_plan_on_this_machine_when_no_budget_given(capsys, tiny_qwen_dir):
    code, out, _ = run_cli(capsys, "plan", "--model", tiny_qwen_dir)
    assert code == 0 and "at 1328x1328 on " in out


@pytest.mark.parametrize("arguments, expected", [
    (("--vram", "2", "--ram", "64"), "error: Qwen-Image at 1328x1328 needs at least"),
    (("--vram", "-1", "--ram", "64"), "error: --vram must be a positive number of GB, got -1.0."),
    (("--device", "cpu", "--vram", "8", "--ram", "8"), "error: --vram applies to a GPU"),
])
def test_error_is_one_line_when_the_plan_cannot_be_made(capsys, tmp_path, arguments, expected):
    code, out, err = run_cli(capsys, "plan", "--preset", "qwen-image", *arguments, "--models-dir", tmp_path)
    assert code == 2 and not out
    assert len(err.strip().splitlines()) == 1 and err.startswith(expected), err
