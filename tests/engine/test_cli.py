"""`python -m engine ...`: images with their settings on success; exit 2 and one line on stderr for bad input."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from engine.cli import main
from engine.metadata import read_parameters

REPO = Path(__file__).resolve().parents[2]


def run_cli(capsys, *arguments: str) -> tuple[int, str, str]:
    code = main([str(argument) for argument in arguments])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, expected: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert lines == [expected], lines


def test_generate_writes_png_with_parameters_when_model_folder_given(capsys, tiny_qwen_dir, tmp_path):
    out = tmp_path / "picture.png"
    code, stdout, _ = run_cli(capsys, "generate", "--model", tiny_qwen_dir, "--prompt", "a red circle",
                              "--negative", "blue", "--width", "64", "--height", "48", "--steps", "3", "--cfg", "2.5",
                              "--seed", "5", "--out", out)
    assert code == 0
    assert stdout.strip() == str(out)
    with Image.open(out) as image:
        assert image.size == (64, 48)
        parameters = read_parameters(image)
    assert parameters == {"prompt": "a red circle", "negative_prompt": "blue", "width": 64, "height": 48,
                          "steps": 3, "cfg": 2.5, "seed": 5, "preset": tiny_qwen_dir.name, "loras": [],
                          "engine_version": "0.1.0"}


def test_same_seed_gives_same_image_and_batch_gets_consecutive_seeds(capsys, tiny_qwen_dir, tmp_path):
    common = ["generate", "--model", tiny_qwen_dir, "--prompt", "a square", "--width", "32", "--height", "32",
              "--steps", "2"]
    assert run_cli(capsys, *common, "--seed", "8", "--count", "2", "--out", tmp_path / "batch.png")[0] == 0
    assert run_cli(capsys, *common, "--seed", "9", "--out", tmp_path / "single.png")[0] == 0
    second = Image.open(tmp_path / "batch-2.png")
    assert read_parameters(second)["seed"] == 9
    assert list(second.getdata()) == list(Image.open(tmp_path / "single.png").getdata())


def test_size_is_rounded_and_the_user_told_when_not_a_multiple_of_16(capsys, tiny_qwen_dir, tmp_path):
    code, _, err = run_cli(capsys, "generate", "--model", tiny_qwen_dir, "--prompt", "x", "--width", "72",
                           "--height", "40", "--steps", "2", "--cfg", "1", "--out", tmp_path / "r.png")
    assert code == 0
    assert "note: width 72 was rounded to 80 (a multiple of 16)." in err
    assert "note: height 40 was rounded to 48 (a multiple of 16)." in err
    assert Image.open(tmp_path / "r.png").size == (80, 48)


def test_image_to_image_from_a_file_records_strength(capsys, tiny_qwen_dir, tmp_path):
    source = tmp_path / "in.png"
    Image.new("RGB", (40, 40), (200, 30, 30)).save(source)
    code, _, _ = run_cli(capsys, "generate", "--model", tiny_qwen_dir, "--prompt", "x", "--width", "32",
                         "--height", "32", "--steps", "4", "--input-image", source, "--strength", "0.5",
                         "--out", tmp_path / "i.png")
    assert code == 0
    parameters = read_parameters(tmp_path / "i.png")
    assert parameters["strength"] == 0.5 and parameters["input_image"] == str(source)


def test_error_raised_if_preset_unknown_with_close_names_suggested(capsys, tmp_path):
    code, _, err = run_cli(capsys, "generate", "--preset", "qwen-imag", "--prompt", "x", "--out", tmp_path / "a.png")
    assert_one_line_error(code, err, "error: Unknown preset 'qwen-imag'. Did you mean qwen-image, qwen-image-2512, "
                                     "qwen-image-distill-full?")


def test_error_raised_if_preset_files_missing(capsys, tmp_path):
    code, _, err = run_cli(capsys, "generate", "--preset", "qwen-image", "--models-dir", tmp_path / "none",
                           "--prompt", "x", "--width", "512", "--height", "512", "--out", tmp_path / "a.png")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith(f"error: Preset 'qwen-image' is missing 9 files under {tmp_path / 'none' / 'Qwen/Qwen-Image'}: "
                          "transformer/config.json, ")
    assert err.rstrip().endswith("Download them with: python -m engine download --preset qwen-image (about 58 GB), "
                                 "or copy the hub repo's files there.")


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--width", "0", "error: width must be a positive number of pixels, got 0."),
    ("--height", "-16", "error: height must be a positive number of pixels, got -16."),
    ("--width", "4096", "error: width 4096 is above Qwen-Image's limit of 2048 pixels. Use at most 2048."),
    ("--steps", "0", "error: steps must be a whole number from 1 to 1000, got 0."),
    ("--cfg", "0.5", "error: cfg must be between 1 and 30, got 0.5. 1 turns guidance off."),
])
def test_error_raised_if_setting_out_of_range(capsys, tiny_qwen_dir, tmp_path, flag, value, message):
    code, _, err = run_cli(capsys, "generate", "--model", tiny_qwen_dir, "--prompt", "x", flag, value,
                           "--out", tmp_path / "a.png")
    assert_one_line_error(code, err, message)
    assert not (tmp_path / "a.png").exists()


def test_error_raised_if_prompt_empty(capsys, tiny_qwen_dir, tmp_path):
    code, _, err = run_cli(capsys, "generate", "--model", tiny_qwen_dir, "--prompt", "  ", "--out", tmp_path / "a.png")
    assert_one_line_error(code, err, "error: The prompt is empty. Describe the image you want.")


def test_error_raised_if_input_image_unreadable(capsys, tiny_qwen_dir, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    code, _, err = run_cli(capsys, "generate", "--model", tiny_qwen_dir, "--prompt", "x", "--input-image", broken,
                           "--out", tmp_path / "a.png")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith(f"error: Cannot read input image {broken}: not a readable image (")
    assert err.rstrip().endswith("Use a PNG, JPEG or WebP file.")


def test_error_raised_if_input_image_missing(capsys, tiny_qwen_dir, tmp_path):
    code, _, err = run_cli(capsys, "generate", "--model", tiny_qwen_dir, "--prompt", "x", "--input-image",
                           tmp_path / "nowhere.png", "--out", tmp_path / "a.png")
    assert_one_line_error(code, err, f"error: Input image {tmp_path / 'nowhere.png'} does not exist.")


def test_error_raised_if_safetensors_shard_truncated(capsys, tiny_qwen_copy, tmp_path):
    shard = tiny_qwen_copy / "transformer" / "diffusion_pytorch_model-00002-of-00004.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 1000])
    code, _, err = run_cli(capsys, "generate", "--model", tiny_qwen_copy, "--prompt", "x", "--width", "32",
                           "--height", "32", "--out", tmp_path / "a.png")
    assert_one_line_error(code, err, f"error: {shard} is truncated: the header promises {len(data):,} bytes but "
                                     f"the file has {len(data) - 1000:,}. Download the file again, or delete it so "
                                     "that the next download fetches it.")


def test_error_raised_if_tokenizer_does_not_fit_text_encoder(capsys, tiny_qwen_copy, tmp_path):
    from engine.toyworld.tiny_qwen_image import train_tokenizer

    # A tokenizer with a larger vocabulary than the encoder's embedding, as from another model.
    letters = random.Random(0)
    words = " ".join("".join(letters.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(6)) for _ in range(5000))
    tokenizer = tiny_qwen_copy / "tokenizer"
    for path in tokenizer.iterdir():
        path.unlink()
    train_tokenizer(tokenizer, extra_text=words, vocab_size=4000)
    code, _, err = run_cli(capsys, "generate", "--model", tiny_qwen_copy, "--prompt", "x", "--width", "32",
                           "--height", "32", "--out", tmp_path / "a.png")
    size = len(json.loads((tokenizer / "vocab.json").read_text())) + 14
    assert_one_line_error(code, err, f"error: The tokenizer in {tokenizer} does not fit the text encoder in "
                                     f"{tiny_qwen_copy / 'text_encoder'}: it has {size} tokens but the encoder's "
                                     "embedding has 640 rows. Use the tokenizer folder of the same repo as the "
                                     "text encoder.")


def test_bad_input_exits_2_without_traceback_when_run_as_a_program(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "engine", "generate", "--preset", "nope", "--prompt", "x", "--out", tmp_path / "a.png"],
        cwd=REPO, capture_output=True, text=True)
    assert completed.returncode == 2
    assert completed.stderr.strip().splitlines() == [
        "error: Unknown preset 'nope'. Known presets: qwen-image, qwen-image-2512, qwen-image-distill-full, "
        "tiny-shapes."]


def test_unknown_flag_gives_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--prompt", "x", "--out", "a.png", "--colour", "red"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: unrecognized arguments: --colour red (see: python -m engine --help)"]


def test_models_lists_presets_with_presence_and_size(capsys, tmp_path):
    code, stdout, _ = run_cli(capsys, "models", "--models-dir", tmp_path)
    assert code == 0
    lines = stdout.strip().splitlines()
    assert lines[0].split() == ["preset", "files", "on", "disk", "title"]
    assert lines[1].split()[:4] == ["qwen-image", "missing", "0", "B"]


def test_download_then_generate_with_a_preset_when_hub_is_faked_at_the_network_boundary(
        capsys, monkeypatch, tiny_qwen_dir, tmp_path):
    """`download` asks ModelScope for the preset's patterns; a fake hub serves the tiny repo's files in the
    Qwen/Qwen-Image layout; then `generate --preset qwen-image` runs on them like on a real download."""
    import fnmatch
    import shutil

    import modelscope

    calls = []

    def fake_snapshot_download(repo_id, allow_patterns, local_dir, progress_callbacks=None):
        calls.append((repo_id, sorted(allow_patterns), local_dir))
        for path in sorted(tiny_qwen_dir.rglob("*")):
            relative = path.relative_to(tiny_qwen_dir).as_posix()
            if path.is_file() and any(fnmatch.fnmatch(relative, pattern) for pattern in allow_patterns):
                target = Path(local_dir) / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
                for callback_class in progress_callbacks or []:
                    callback = callback_class(relative, path.stat().st_size)
                    callback.update(path.stat().st_size)
        return local_dir

    monkeypatch.setattr(modelscope, "snapshot_download", fake_snapshot_download)
    models = tmp_path / "models"
    code, _, err = run_cli(capsys, "download", "--preset", "qwen-image", "--models-dir", models)
    assert code == 0, err
    assert calls == [("Qwen/Qwen-Image", sorted([
        "transformer/config.json", "transformer/diffusion_pytorch_model*.safetensors",
        "transformer/diffusion_pytorch_model.safetensors.index.json", "vae/config.json",
        "vae/diffusion_pytorch_model*.safetensors", "text_encoder/config.json", "text_encoder/generation_config.json",
        "text_encoder/model*.safetensors", "text_encoder/model.safetensors.index.json", "tokenizer/*.json",
        "tokenizer/*.txt", "tokenizer/*.jinja", "scheduler/scheduler_config.json"]), str(models / "Qwen/Qwen-Image"))]
    assert "100% " in err and err.rstrip().endswith(f"qwen-image: all files present under {models}")

    out = tmp_path / "fox.png"
    code, stdout, err = run_cli(capsys, "generate", "--preset", "qwen-image", "--models-dir", models, "--prompt",
                                "a red fox", "--width", "256", "--height", "256", "--steps", "2", "--out", out)
    assert code == 0, err
    assert read_parameters(out)["preset"] == "qwen-image"
    code, stdout, _ = run_cli(capsys, "models", "--models-dir", models)
    assert stdout.splitlines()[1].split()[:2] == ["qwen-image", "present"]


def test_engine_never_imports_gradio():
    code = ("import sys, engine, engine.api, engine.cli, engine.bench, engine.sources, engine.pipelines.qwen_image;"
            "print('gradio' in sys.modules)")
    completed = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert completed.stdout.strip() == "False", completed.stderr
