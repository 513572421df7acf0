"""`python -m engine.toyworld train` end to end with the QUICK recipe (every stage, a few steps each)."""

from __future__ import annotations

import json
import math
import re
import shutil
from dataclasses import replace

import pytest
import torch
from diffusers import QwenImageTransformer2DModel

import engine
from engine.schedulers.flow_match import FlowMatchConfig, dynamic_shift_mu
from engine.toyworld.build import CACHE_FILE, BuildError, _Build, build, cache_key, new_transformer
from engine.toyworld.parallel_training import ParallelTrainingError
from engine.training.caching import TrainingCache
from engine.training.loop import trained_weights
from engine.toyworld.recipe import QUICK, Recipe, Restart

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
    assert vae_config["latents_std"] != [1.0] * 16  # measured on the VAE's latents (QUICK has no latent floor)
    preview = json.loads((out / "preview.json").read_text())
    assert len(preview["factors"]) == 16 and len(preview["bias"]) == 3
    model = engine.load(out, device="cpu")
    image = model.generate("a red circle in the top left on a blue background", width=64, height=64, steps=2).images[0]
    assert image.size == (64, 64)
    assert {"vae_psnr_db", "transformer_final_loss", "total_s"} <= set(report)


def test_a_latent_floor_makes_the_vae_stage_give_latents_in_principal_directions(tmp_path):
    recipe = replace(QUICK, latent_floor=1.0)
    (tmp_path / "model").mkdir()
    messages: list[str] = []
    run = _Build(recipe, tmp_path, messages.append)
    run.vae(tmp_path / "model" / "vae")
    vae_config = json.loads((tmp_path / "model" / "vae" / "config.json").read_text())
    assert vae_config["latents_mean"] == [0.0] * 16 and vae_config["latents_std"] == [1.0] * 16
    shares, gains = run.report["latent_direction_share"], run.report["latent_direction_gain"]
    assert sum(shares) == pytest.approx(1.0, abs=1e-3) and shares == sorted(shares, reverse=True)
    assert gains[0] == 1.0 and gains == sorted(gains) and gains[-1] <= recipe.latent_max_gain
    assert any(message.startswith("vae: latent turned into its principal directions") for message in messages)


def test_a_recipe_with_a_4x_vae_builds_a_model_that_draws_at_its_scale(tmp_path):
    recipe = replace(QUICK, vae=replace(QUICK.vae, downsamples=2),
                     transformer=replace(QUICK.transformer, steps=4, checkpoint_every=4, log_every=2))
    build(recipe, tmp_path / "out", tmp_path / "work", say=lambda message: None)
    vae_config = json.loads((tmp_path / "out" / "vae" / "config.json").read_text())
    assert vae_config["temperal_downsample"] == [False, True] and vae_config["dim_mult"] == [1, 2, 4]
    cache = TrainingCache.load(tmp_path / "work" / CACHE_FILE, cache_key(recipe))
    assert cache.latents.shape[-2:] == (32, 32)  # 128-pixel renders, 4 pixels per latent position
    model = engine.load(tmp_path / "out", device="cpu")
    assert model.generate("a red circle", width=64, height=48, steps=2).images[0].size == (64, 48)


def test_the_published_scheduler_shifts_by_the_recipe_at_every_image_size(built):
    root, _, _ = built
    config = FlowMatchConfig.from_file(root / "out" / "scheduler" / "scheduler_config.json")
    for tokens in (64, 256, 4096):
        assert math.exp(dynamic_shift_mu(tokens, config)) == pytest.approx(QUICK.sampling_shift)


@pytest.mark.parametrize("shift", [0.0, -1.0])
def test_error_raised_for_a_sampling_shift_that_is_not_positive(shift):
    with pytest.raises(ValueError) as raised:
        Recipe(sampling_shift=shift)
    assert str(raised.value) == f"sampling_shift: must be positive, got {shift}"


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


def test_a_recipe_that_changes_only_the_transformer_keeps_the_cache():
    retrained = replace(QUICK, sizes=replace(QUICK.sizes, dit_layers=3, dit_heads=4, rope_axes=(4, 4, 8)),
                        transformer=replace(QUICK.transformer, learning_rate=2e-3, steps=99),
                        shape_loss_emphasis=3.0, latent_max_gain=2.0)  # no latent floor: the gain is unused
    assert cache_key(retrained) == cache_key(QUICK)


@pytest.mark.parametrize("changed", [
    replace(QUICK, sizes=replace(QUICK.sizes, text_hidden=48)),
    replace(QUICK, sizes=replace(QUICK.sizes, vocab_size=512)),
    replace(QUICK, train_images=40),
    replace(QUICK, vae=replace(QUICK.vae, steps=5)),
    replace(QUICK, latent_floor=0.5),
])
def test_a_recipe_that_changes_what_is_encoded_makes_a_new_cache(changed):
    assert cache_key(changed) != cache_key(QUICK)


def test_with_a_latent_floor_its_gain_cap_is_part_of_the_cache_key():
    floored = replace(QUICK, latent_floor=1.0)
    assert cache_key(replace(floored, latent_max_gain=2.0)) != cache_key(floored)


def _train_stage_only(recipe, cache_from, work):
    """Run just the transformer stage of `recipe` in `work`, on the cache of an earlier build; its float32
    trained weights (the EMA copy) and the progress messages."""
    (work / "model").mkdir(parents=True)
    shutil.copy(cache_from / CACHE_FILE, work / CACHE_FILE)
    messages: list[str] = []
    _Build(recipe, work, messages.append).transformer(work / "model" / "transformer")
    return trained_weights(work / "transformer"), messages


def test_two_worker_processes_train_what_one_process_trains(built, tmp_path):
    root, _, _ = built
    short = replace(QUICK, transformer=replace(QUICK.transformer, steps=4, checkpoint_every=4, log_every=2))
    one, _ = _train_stage_only(short, root / "work", tmp_path / "one")
    two, messages = _train_stage_only(replace(short, transformer_processes=2), root / "work", tmp_path / "two")
    initial = new_transformer(short).state_dict()
    assert one.keys() == two.keys() == initial.keys()
    assert any(not torch.equal(one[key], initial[key]) for key in one)  # it trained
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5)
    assert [m for m in messages if m.startswith("transformer: step")][-1].startswith("transformer: step 4/4")
    state = json.loads((tmp_path / "two/transformer/checkpoints/step-0000004/state.json").read_text())
    assert state["state"]["processes"] == 2 and state["state"]["config"]["batch_size"] == 4


def test_the_transformer_stage_in_bf16_autocast_follows_the_float32_run(built, tmp_path):
    """A recipe may train in bf16 autocast (float32 weights; 1.3x to 1.8x faster per step on a CPU with bf16
    instructions); from the same start and batches its first steps must move the weights as float32 does."""
    root, _, _ = built
    short = replace(QUICK, transformer=replace(QUICK.transformer, steps=4, checkpoint_every=4, log_every=2))
    exact, _ = _train_stage_only(short, root / "work", tmp_path / "fp32")
    mixed, _ = _train_stage_only(replace(short, transformer=replace(short.transformer, mixed_precision="bf16")),
                                 root / "work", tmp_path / "bf16")
    initial = new_transformer(short).state_dict()
    assert all(mixed[key].dtype == torch.float32 for key in mixed)
    moved_exact = torch.cat([(exact[key] - initial[key]).flatten() for key in initial])
    moved_mixed = torch.cat([(mixed[key] - initial[key]).flatten() for key in initial])
    assert moved_mixed.norm() > 0
    assert torch.nn.functional.cosine_similarity(moved_mixed, moved_exact, dim=0) > 0.95
    assert not torch.equal(moved_mixed, moved_exact)  # autocast did run in bf16


def test_a_restart_trains_on_from_the_last_runs_ema_weights_with_its_own_schedule(built, tmp_path, monkeypatch):
    import engine.training.loop as loop

    root, _, _ = built
    recipe = replace(QUICK, transformer=replace(QUICK.transformer, steps=4, checkpoint_every=4, log_every=2),
                     transformer_restarts=(Restart(steps=3, learning_rate=5e-4, warmup_steps=1, ema_decay=0.5),))
    calls = []
    real_train = loop.train

    def spy(transformer, cache, config, schedule, output_dir, progress=None, **kwargs):
        calls.append(({k: v.clone() for k, v in transformer.state_dict().items()}, config, output_dir))
        return real_train(transformer, cache, config, schedule, output_dir, progress, **kwargs)

    monkeypatch.setattr(loop, "train", spy)
    _, messages = _train_stage_only(recipe, root / "work", tmp_path)
    work = tmp_path
    first_run = trained_weights(work / "transformer")
    assert [output_dir for _, _, output_dir in calls] == [work / "transformer", work / "transformer-restart-1"]
    first_start, _, _ = calls[0]
    restart_start, restart_config, _ = calls[1]
    initial = new_transformer(recipe).state_dict()
    assert all(torch.equal(first_start[key], initial[key]) for key in initial)
    assert all(torch.equal(restart_start[key], first_run[key]) for key in first_run)  # the EMA copy, not the raw
    assert any(not torch.equal(first_run[key], trained_weights(work / "transformer", use_ema=False)[key])
               for key in first_run)
    assert (restart_config.steps, restart_config.learning_rate, restart_config.warmup_steps,
            restart_config.ema_decay, restart_config.batch_size) == (3, 5e-4, 1, 0.5, QUICK.transformer.batch_size)
    losses = [json.loads(line) for line in (work / "transformer-restart-1" / "loss.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in losses] == [2, 3]
    assert losses[0]["lr"] == pytest.approx(5e-4)  # warmed up again after one step
    published = QwenImageTransformer2DModel.from_pretrained(work / "model" / "transformer",
                                                          torch_dtype=torch.bfloat16).state_dict()
    restarted = trained_weights(work / "transformer-restart-1")
    assert all(torch.equal(published[key], restarted[key].to(published[key].dtype)) for key in restarted)
    steps = [m.split()[2] for m in messages if m.startswith("transformer: step")]
    assert steps[-1] == "7/7" and "4/7" in steps  # one count over both runs


def test_a_build_stopped_in_a_restart_resumes_there_and_ends_as_an_unbroken_one(built, tmp_path):
    root, _, _ = built
    recipe = replace(QUICK, transformer=replace(QUICK.transformer, steps=4, checkpoint_every=2, log_every=2),
                     transformer_restarts=(Restart(steps=4, learning_rate=5e-4, warmup_steps=1),))
    _train_stage_only(recipe, root / "work", tmp_path)
    unbroken = trained_weights(tmp_path / "transformer-restart-1")
    first_log = (tmp_path / "transformer" / "loss.jsonl").read_text()
    shutil.rmtree(tmp_path / "transformer-restart-1" / "checkpoints" / "step-0000004")  # as if stopped at step 2

    messages: list[str] = []
    _Build(recipe, tmp_path, messages.append).transformer(tmp_path / "model" / "transformer")
    assert (tmp_path / "transformer" / "loss.jsonl").read_text() == first_log  # the first run was not trained again
    resumed = trained_weights(tmp_path / "transformer-restart-1")
    for key in unbroken:
        torch.testing.assert_close(resumed[key], unbroken[key])
    assert [m.split()[2] for m in messages if m.startswith("transformer: step")] == ["8/8"]


@pytest.mark.parametrize("restart, message", [
    (Restart(steps=0, learning_rate=1e-3),
     "transformer_restarts[0]: TrainConfig.steps must be a whole number of at least 1, got 0."),
    (Restart(steps=10, learning_rate=1e-3, min_lr_ratio=2.0),
     "transformer_restarts[0]: TrainConfig.min_lr_ratio must be a finite number (>= 0 and <= 1), got 2.0."),
])
def test_the_recipe_checks_each_restart(restart, message):
    with pytest.raises(ValueError) as raised:
        Recipe(transformer_restarts=(restart,))
    assert str(raised.value) == message


def test_a_failing_worker_process_is_reported_with_its_error(tmp_path):
    (tmp_path / "model").mkdir()
    recipe = replace(QUICK, transformer_processes=2)
    with pytest.raises(ParallelTrainingError) as raised:
        _Build(recipe, tmp_path, lambda message: None).transformer(tmp_path / "model" / "transformer")
    assert re.fullmatch(
        rf"Training the transformer in 2 processes failed: worker [01]: The cache {re.escape(str(tmp_path))}/"
        r"cache\.safetensors is missing or stale\. Delete it and run again with --resume\.", str(raised.value))
