"""`python -m engine.toyworld train` end to end with the QUICK recipe (every stage, a few steps each)."""

from __future__ import annotations

import json

import pytest

import engine
from engine.toyworld.build import BuildError, build
from engine.toyworld.recipe import QUICK

LAYOUT = [
    "model_index.json", "preview.json", "scheduler/scheduler_config.json", "text_encoder/config.json",
    "tokenizer/merges.txt", "tokenizer/tokenizer_config.json", "tokenizer/vocab.json", "transformer/config.json",
    "vae/config.json",
]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("quick-build")
    messages: list[str] = []
    report = build(QUICK, root / "out", root / "work", say=messages.append)
    return root, report, messages


def test_every_file_of_the_qwen_image_layout_is_published_and_loads(built):
    root, report, _ = built
    out = root / "out"
    assert [name for name in LAYOUT if not (out / name).is_file()] == []
    assert list((out / "transformer").glob("diffusion_pytorch_model*.safetensors"))
    assert list((out / "text_encoder").glob("model*.safetensors"))
    vae_config = json.loads((out / "vae" / "config.json").read_text())
    assert len(vae_config["latents_mean"]) == 16 and all(std > 0 for std in vae_config["latents_std"])
    preview = json.loads((out / "preview.json").read_text())
    assert len(preview["factors"]) == 16 and len(preview["bias"]) == 3
    model = engine.load(out, device="cpu")
    image = model.generate("a red circle in the top left on a blue background", width=64, height=64, steps=2).images[0]
    assert image.size == (64, 64)
    assert {"vae_psnr_db", "transformer_final_loss", "total_s"} <= set(report)


def test_the_smoke_run_learns_its_32_images(built):
    root, _, _ = built
    losses = [json.loads(line)["loss"] for line in (root / "work" / "transformer" / "loss.jsonl").read_text().splitlines()]
    assert len(losses) == 3 and losses[-1] < losses[0]


def test_progress_is_reported_for_every_stage(built):
    _, _, messages = built
    for stage in ("tokenizer", "text_encoder", "vae", "cache", "transformer", "preview"):
        assert f"{stage}: finished" in "\n".join(messages)
    assert any(message.startswith("transformer: step 36/36") for message in messages)


def test_resume_skips_finished_stages_and_publishes_again(built):
    root, _, _ = built
    messages: list[str] = []
    build(QUICK, root / "again", root / "work", resume=True, say=messages.append)
    assert sum("done already, skipped" in message for message in messages) == 6
    assert (root / "again" / "transformer" / "config.json").is_file()


def test_error_raised_if_the_work_folder_holds_a_run_and_resume_is_not_asked(built):
    root, _, _ = built
    with pytest.raises(BuildError, match="--resume"):
        build(QUICK, root / "elsewhere", root / "work")
