"""run.toml: defaults, and one-line errors naming file, section and key, word for word."""

from __future__ import annotations

import pytest

from engine.training.config import QWEN_IMAGE_LORA_TARGETS, TimestepSampling, TimestepWeighting, TrainMode
from engine.training.run_config import Fp8Base, RunConfigError, read_run_config

MINIMAL = """
[dataset]
path = "datasets/star"
[train]
steps = 600
[output]
dir = "outputs/training/star"
"""


def write(tmp_path, text: str):
    path = tmp_path / "run.toml"
    path.write_text(text)
    return path


def test_a_minimal_file_gets_the_documented_defaults(tmp_path):
    config = read_run_config(write(tmp_path, MINIMAL))
    assert config.model.preset == "tiny-shapes" and config.model.model is None
    assert config.dataset.resolution is None and config.dataset.repeats == 1 and config.dataset.cache
    assert not config.dataset.alpha_mask
    train = config.train
    assert train.mode is TrainMode.LORA and train.steps == 600 and train.batch_size == 1
    assert train.lora_rank == 16 and train.lora_alpha == 16.0 and train.lora_targets == QWEN_IMAGE_LORA_TARGETS
    assert train.timestep_sampling is TimestepSampling.SHIFTED_UNIFORM
    assert train.timestep_weighting is TimestepWeighting.BELL
    assert config.fp8_base is Fp8Base.AUTO and config.trigger_word == "" and not config.samples.enabled
    assert config.name == "star" and str(config.lora_path) == "outputs/training/star/star.safetensors"


def test_the_contracts_example_file_is_read_as_written(tmp_path):
    config = read_run_config(write(tmp_path, """
[model]
preset = "tiny-shapes"
[dataset]
path = "datasets/star"
resolution = 128
repeats = 2
alpha_mask = true
[train]
mode = "lora"
steps = 600
batch_size = 4
gradient_accumulation = 2
gradient_checkpointing = true
learning_rate = 1e-4
rank = 8
alpha = 4
target_modules = ["to_q", "to_v"]
timestep_sampling = "qwen_shift"
checkpoint_every = 100
sample_every = 100
sample_prompts = ["a star in the center on a blue background"]
sample_steps = 20
seed = 0
trigger_word = "zxq"
fp8_base = false
[output]
dir = "outputs/training/star"
name = "star-v1"
"""))
    assert config.dataset.resolution == 128 and config.dataset.repeats == 2 and config.dataset.alpha_mask
    assert config.train.gradient_accumulation == 2 and config.train.gradient_checkpointing
    assert (config.train.lora_rank, config.train.lora_alpha, config.train.lora_targets) == (8, 4.0, ("to_q", "to_v"))
    assert config.train.timestep_weighting is TimestepWeighting.NONE  # the bell belongs to shifted_uniform
    assert config.samples.every == 100 and config.samples.prompts == ("a star in the center on a blue background",)
    assert config.trigger_word == "zxq" and config.fp8_base is Fp8Base.OFF and config.name == "star-v1"


@pytest.mark.parametrize("change, message", [
    (("[train]", "[train]\nranks = 4"), "[train] ranks is not a known key (known: alpha, batch_size, caption_dropout, "
     "checkpoint_every, fp8_base, gradient_accumulation, gradient_checkpointing, keep_checkpoints, learning_rate, "
     "log_every, lr_schedule, max_grad_norm, mixed_precision, mode, rank, sample_every, sample_prompts, sample_steps, "
     "seed, steps, target_modules, timestep_sampling, timestep_weighting, trigger_word, warmup_steps, weight_decay)."),
    (("[output]", "[outputs]"), "[outputs] is not a known section (known: model, dataset, train, output)."),
    (("steps = 600", "steps = 0"), "[train] steps must be at least 1, got 0."),
    (("steps = 600", "steps = 6.5"), "[train] steps must be a whole number, got 6.5."),
    (("steps = 600", "steps = 6\nlearning_rate = \"fast\""), "[train] learning_rate must be a number, got 'fast'."),
    (("steps = 600", "steps = 6\nlearning_rate = 0"), "[train] learning_rate must be a finite number (> 0), got 0.0."),
    (("steps = 600", "steps = 6\nmode = \"dora\""), "[train] mode must be one of full, lora, got 'dora'."),
    (("steps = 600", "steps = 6\ntimestep_sampling = \"uniform\""),
     "[train] timestep_sampling must be one of shifted_uniform, logit_normal, qwen_shift, got 'uniform'."),
    (("steps = 600", "steps = 6\nsample_prompts = [\"\"]"), "[train] sample_prompts must be a list of non-empty "
     "strings, got ['']."),
    (("steps = 600", "steps = 6\nfp8_base = \"maybe\""), "[train] fp8_base must be one of auto, on, off, got 'maybe'."),
    (("path = \"datasets/star\"", "path = \"datasets/star\"\nresolution = 100"),
     "[dataset] resolution must be a multiple of 16, got 100."),
    (("path = \"datasets/star\"", ""), "[dataset] path is missing."),
    (("path = \"datasets/star\"", "path = \"datasets/star\"\nalpha_mask = \"yes\""),
     "[dataset] alpha_mask must be true or false, got 'yes'."),
    (("[dataset]", "[model]\npreset = \"tiny-shapes\"\nmodel = \"x\"\n[dataset]"),
     "[model] model and [model] preset are both given. Give one: a preset name or a model folder."),
    (("dir = \"outputs/training/star\"", "dir = \"outputs/training/star\"\nname = \"../escape\""),
     "[output] name must be a plain file name (letters, digits, . _ -), got '../escape'."),
])
def test_error_names_file_section_and_key_on_one_line(tmp_path, change, message):
    path = write(tmp_path, MINIMAL.replace(*change))
    with pytest.raises(RunConfigError) as caught:
        read_run_config(path)
    assert str(caught.value) == f"{path}: {message}"
    assert "\n" not in str(caught.value)


def test_error_raised_if_a_section_is_missing_or_the_file_is_not_toml(tmp_path):
    path = write(tmp_path, MINIMAL.replace("[output]\ndir = \"outputs/training/star\"", ""))
    with pytest.raises(RunConfigError) as caught:
        read_run_config(path)
    assert str(caught.value) == f"{path}: the [output] section is missing."
    path = write(tmp_path, "[train\nsteps = 1")
    with pytest.raises(RunConfigError, match=r"run.toml: not valid TOML \("):
        read_run_config(path)
    with pytest.raises(RunConfigError) as caught:
        read_run_config(tmp_path / "absent.toml")
    assert str(caught.value) == f"The run config {tmp_path / 'absent.toml'} does not exist."
