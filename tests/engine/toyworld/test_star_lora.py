"""The star LoRA recipe: 24 single large stars captioned with the trigger word, and a run.toml that the
trainer reads; trained here for two steps on the tiny random model (the real run needs tiny-shapes)."""

from __future__ import annotations

import csv

import pytest
from PIL import Image

from engine.toyworld.__main__ import main
from engine.toyworld.detector import detect
from engine.toyworld.star_lora import PROMPT, TRIGGER, score_star_lora, star_seeds, write_star_recipe
from engine.toyworld.vocabulary import Shape
from engine.training.config import TimestepSampling
from engine.training.run import run_from_file
from engine.training.run_config import read_run_config


def test_the_dataset_is_24_single_large_stars_captioned_with_the_trigger_word(tmp_path):
    run_toml = write_star_recipe(tmp_path)
    with (tmp_path / "dataset" / "metadata.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 24 and len({row["prompt"] for row in rows}) > 12
    for row in rows:
        assert row["prompt"].startswith("a large ") and f" {TRIGGER} star " in row["prompt"]
        assert " and " not in row["prompt"]  # one star per image
    found = [shape.shape for row in rows for shape in detect(Image.open(tmp_path / "dataset" / row["image"])).shapes]
    assert found == [Shape.STAR] * 24
    assert star_seeds() == star_seeds()  # the same images on every machine

    config = read_run_config(run_toml)
    assert config.model.preset == "tiny-shapes" and config.dataset.path == tmp_path / "dataset"
    assert config.dataset.resolution == 128 and config.trigger_word == TRIGGER
    assert PROMPT in config.samples.prompts and config.lora_path == tmp_path / "training" / "star.safetensors"


def test_the_recipe_trains_and_scores_on_the_tiny_random_model(tiny_qwen_dir, tmp_path, capsys):
    assert main(["star-lora", "--out", str(tmp_path), "--steps", "2"]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {tmp_path / 'dataset'} and {tmp_path / 'run.toml'}")
    text = (tmp_path / "run.toml").read_text().replace('preset = "tiny-shapes"', f'model = "{tiny_qwen_dir}"')
    (tmp_path / "run.toml").write_text(text.replace("sample_every = 250", "sample_every = 0"))
    status = run_from_file(tmp_path / "run.toml")
    assert status.state.value == "finished" and status.step == 2

    import engine

    score = score_star_lora(engine.load(tiny_qwen_dir, device="cpu"), tmp_path / "training" / "star.safetensors",
                            seeds=1)
    assert score.seeds == 1 and score.prompt == PROMPT and {score.with_lora, score.without_lora} <= {0.0, 1.0}


def test_with_a_background_alpha_the_pngs_mark_the_star_and_the_run_weighs_its_loss_by_them(tmp_path):
    import numpy as np

    from engine.toyworld.star_lora import StarRecipe
    from engine.toyworld.world import make_sample

    run_toml = write_star_recipe(tmp_path, StarRecipe(background_alpha=51))
    assert read_run_config(run_toml).dataset.alpha_mask
    image = Image.open(tmp_path / "dataset" / "star-00.png")
    assert image.mode == "RGBA"
    alpha = np.asarray(image.getchannel("A"))
    star = make_sample(star_seeds(1)[0], size=128, shapes=(Shape.STAR,)).masks[0]
    assert set(np.unique(alpha)) == {51, 255} and bool((alpha[star] == 255).all())
    assert list(image.convert("RGB").getdata()) == list(make_sample(star_seeds(1)[0], size=128,
                                                                    shapes=(Shape.STAR,)).image.getdata())
    assert not read_run_config(write_star_recipe(tmp_path / "plain")).dataset.alpha_mask


def test_the_noise_levels_the_run_draws_are_chosen_on_the_command_line(tmp_path, capsys):
    assert main(["star-lora", "--out", str(tmp_path / "default")]) == 0
    assert read_run_config(tmp_path / "default" / "run.toml").train.timestep_sampling is \
        TimestepSampling.SHIFTED_UNIFORM
    assert main(["star-lora", "--out", str(tmp_path / "qwen"), "--timestep-sampling", "qwen_shift"]) == 0
    assert read_run_config(tmp_path / "qwen" / "run.toml").train.timestep_sampling is TimestepSampling.QWEN_SHIFT
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["star-lora", "--out", str(tmp_path / "bad"), "--timestep-sampling", "uniform"])
    assert "argument --timestep-sampling: invalid choice: 'uniform'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
