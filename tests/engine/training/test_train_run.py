"""A whole run from a run.toml, in this process, on the tiny random model: the files a watcher reads
(status.json, loss.jsonl, samples, the LoRA), Stop by file or signal, resume, refusals, and failures."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from engine.errors import EngineError
from engine.metadata import read_parameters
from engine.training.data import DatasetError
from engine.training.run import TrainError, run_from_file, with_trigger
from engine.training.status import read_status
from engine.training.stopping import STOP_FILE
from tests.engine.training.conftest import write_config

PROMPT = "a red circle in the top left on a blue background"


def test_a_run_writes_its_log_status_samples_and_a_lora_that_generates_its_last_sample(
        tiny_qwen_dir, dataset, tmp_path):
    import engine
    from engine.lora.files import read_lora_info
    from engine.settings import GenerateSettings

    path = write_config(tmp_path, tiny_qwen_dir, dataset, steps=4, sample_every=2, sample_prompts=[PROMPT],
                        sample_steps=3, trigger_word="zxq")
    lines = []
    status = run_from_file(path, say=lines.append)
    out = tmp_path / "out"
    assert read_status(out) == status
    assert status.state.value == "finished" and (status.step, status.total) == (4, 4)
    assert status.samples == ("samples/step-0000002-0.png", "samples/step-0000004-0.png")
    assert status.lora == str(out / "run.safetensors") and status.message == "finished 4 steps"
    assert [line["step"] for line in map(json.loads, (out / "loss.jsonl").read_text().splitlines())] == [1, 2, 3, 4]
    assert "step 4/4" in " ".join(lines) and f"LoRA written to {out / 'run.safetensors'}" in lines

    info = read_lora_info(out / "run.safetensors")
    assert (info.rank, info.alpha, info.trigger_words, info.steps) == (4, 4.0, ("zxq",), 4)
    assert info.base_model == tiny_qwen_dir.name
    assert all(key.startswith("transformer.") and ".default." not in key for key in load_file(out / "run.safetensors"))

    # The last sample is what the engine makes from the same settings with the LoRA file applied.
    parameters = read_parameters(out / "samples/step-0000004-0.png")
    assert parameters["prompt"] == PROMPT and parameters["training"] == {"run": "run", "step": 4}
    settings = GenerateSettings(prompt=PROMPT, negative_prompt=parameters["negative_prompt"], width=64, height=64,
                                steps=3, cfg=parameters["cfg"], seed=parameters["seed"],
                                loras=[{"path": str(out / "run.safetensors"), "weight": 1.0}])
    image = engine.load(tiny_qwen_dir, device="cpu").generate(settings).images[0]
    sample = Image.open(out / "samples/step-0000004-0.png").convert("RGB")
    difference = (torch.tensor(list(image.getdata())) - torch.tensor(list(sample.getdata()))).abs()
    assert difference.max() <= 2  # peft's layers and engine.lora's hooks round differently, by a level at most


def test_stop_file_ends_the_run_with_a_checkpoint_and_lora_and_resume_ends_like_the_whole_run(
        tiny_qwen_dir, dataset, tmp_path):
    run_from_file(write_config(tmp_path / "whole", tiny_qwen_dir, dataset))
    split = write_config(tmp_path / "split", tiny_qwen_dir, dataset)
    out = tmp_path / "split" / "out"

    def say(line: str) -> None:
        if line.startswith("step 2/"):
            (out / STOP_FILE).touch()

    stopped = run_from_file(split, say=say)
    assert stopped.state.value == "stopped" and stopped.step == 2 and stopped.message == "stopped at step 2 of 4"
    assert not (out / STOP_FILE).exists() and (out / "run.safetensors").is_file()
    assert stopped.lora == str(out / "run.safetensors")
    assert [path.name for path in sorted((out / "checkpoints").iterdir())] == ["step-0000002"]

    resumed = run_from_file(split, resume=True)
    assert resumed.state.value == "finished" and resumed.step == 4
    expected, got = load_file(tmp_path / "whole/out/run.safetensors"), load_file(out / "run.safetensors")
    assert expected.keys() == got.keys() and all(torch.equal(expected[key], got[key]) for key in expected)
    losses = [json.loads(line)["loss"] for line in (out / "loss.jsonl").read_text().splitlines()]
    assert losses == [json.loads(line)["loss"]
                      for line in (tmp_path / "whole/out/loss.jsonl").read_text().splitlines()]


def test_sigterm_stops_the_run_after_the_current_step(tiny_qwen_dir, dataset, tmp_path):
    path = write_config(tmp_path, tiny_qwen_dir, dataset, steps=3)

    def say(line: str) -> None:
        if line.startswith("step 1/"):
            os.kill(os.getpid(), signal.SIGTERM)

    status = run_from_file(path, say=say)
    assert status.state.value == "stopped" and status.step == 1
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is removed with the run


def test_error_raised_if_a_fresh_start_finds_a_run_or_a_resume_finds_none(tiny_qwen_dir, dataset, tmp_path):
    path = write_config(tmp_path, tiny_qwen_dir, dataset, steps=2)
    out = tmp_path / "out"
    with pytest.raises(TrainError) as caught:
        run_from_file(path, resume=True)
    assert str(caught.value) == (f"There is no checkpoint to resume in {out / 'checkpoints'}. "
                                 "Start the run without --resume.")
    assert read_status(out).state.value == "failed" and read_status(out).message == str(caught.value)
    run_from_file(path)
    with pytest.raises(TrainError) as caught:
        run_from_file(path)
    assert str(caught.value) == (f"{out} holds a run that reached step 2. Resume it (--resume), or choose another "
                                 "output folder to start afresh.")
    write_config(tmp_path, tiny_qwen_dir, dataset, steps=2, rank=8)
    with pytest.raises(EngineError, match=r"was made with other settings \(lora_alpha, lora_rank\)"):
        run_from_file(path, resume=True)
    assert read_status(out).state.value == "failed"


def test_dataset_errors_mark_the_run_failed_with_their_message(tiny_qwen_dir, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (64, 64)).save(images / "lonely.png")
    path = write_config(tmp_path, tiny_qwen_dir, images)
    with pytest.raises(DatasetError) as caught:
        run_from_file(path)
    status = read_status(tmp_path / "out")
    assert status.state.value == "failed" and status.message == str(caught.value)
    assert "lonely.png" in status.message


def test_images_of_two_shapes_train_in_two_buckets_and_without_a_cache_learn_the_same(tiny_qwen_dir, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for index in range(4):
        wide = index % 2 == 0
        Image.new("RGB", (96, 48) if wide else (48, 96), (40 * index, 80, 200)).save(images / f"{index}.png")
        (images / f"{index}.txt").write_text(f"a {'wide' if wide else 'tall'} picture")
    cached = write_config(tmp_path / "cached", tiny_qwen_dir, images, steps=2)
    run_from_file(cached)
    assert sorted(path.name for path in (tmp_path / "cached/out/cache").glob("bucket-*")) == [
        "bucket-48x80.safetensors", "bucket-80x48.safetensors"]
    text = cached.read_text().replace("resolution = 64", "resolution = 64\ncache = false")
    (tmp_path / "direct").mkdir()
    (tmp_path / "direct/run.toml").write_text(text.replace(str(tmp_path / "cached"), str(tmp_path / "direct")))
    run_from_file(tmp_path / "direct/run.toml")
    assert not list((tmp_path / "direct/out/cache").glob("bucket-*"))
    expected = load_file(tmp_path / "cached/out/run.safetensors")
    got = load_file(tmp_path / "direct/out/run.safetensors")
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-6)


def test_the_trigger_word_leads_every_caption_that_lacks_it():
    assert with_trigger("a star in the center", "zxq") == "zxq a star in the center"
    assert with_trigger("a zxq star, in the center", "zxq") == "a zxq star, in the center"
    assert with_trigger("a star", "") == "a star"


def test_full_mode_writes_the_trained_transformer_instead_of_a_lora(tiny_qwen_dir, dataset, tmp_path):
    from diffusers import QwenImageTransformer2DModel

    status = run_from_file(write_config(tmp_path, tiny_qwen_dir, dataset, mode="full", steps=2))
    folder = tmp_path / "out" / "run-transformer"
    assert status.state.value == "finished" and status.lora is None
    trained = QwenImageTransformer2DModel.from_pretrained(folder).state_dict()
    saved = load_file(tmp_path / "out/checkpoints/step-0000002/model.safetensors")
    assert all(torch.equal(trained[name], saved[name]) for name in saved)
    base = QwenImageTransformer2DModel.from_pretrained(tiny_qwen_dir / "transformer").state_dict()
    assert not torch.equal(trained["proj_out.weight"], base["proj_out.weight"])


def test_alpha_mask_weighs_the_cached_loss_by_each_images_transparency(tiny_qwen_dir, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for index in range(2):
        image = Image.new("RGBA", (64, 64), (20, 20, 200, 0))  # the background teaches nothing
        image.paste((200, 20, 20, 255), (0, 0, 32, 64))  # the left half everything
        image.save(images / f"{index}.png")
        (images / f"{index}.txt").write_text("a red left half")
    path = write_config(tmp_path, tiny_qwen_dir, images, steps=1)
    path.write_text(path.read_text().replace("resolution = 64", "resolution = 64\nalpha_mask = true"))
    run_from_file(path)
    cached = load_file(tmp_path / "out/cache/bucket-64x64.safetensors")
    assert torch.equal(cached["loss_weights"][:, :, :4], torch.full((2, 8, 4), 2.0))
    assert torch.equal(cached["loss_weights"][:, :, 4:], torch.zeros(2, 8, 4))
