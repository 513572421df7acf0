"""The flow-matching loop on 32 shapes-world images with the tiny random model: it learns, checkpoints, and a
run stopped half-way and resumed ends with exactly the weights of the run that never stopped."""

from __future__ import annotations

import copy

import pytest
import torch

from engine.schedulers.flow_match import QWEN_IMAGE
from engine.training import checkpoint
from engine.training.config import LrSchedule, TimestepSampling, TrainConfig
from engine.training.logbook import Logbook
from engine.training.loop import (CHECKPOINTS, LOSS_LOG, batch_indices, learning_rate_at, train,
                                  trained_weights)
from engine.training.objective import sample_sigmas

SMOKE = TrainConfig(steps=40, batch_size=8, learning_rate=1e-3, warmup_steps=4, checkpoint_every=20, log_every=5,
                    caption_dropout=0.1, ema_decay=0.9, seed=3)


@pytest.fixture()
def transformer(tiny_model):
    return copy.deepcopy(tiny_model.modules.transformer)


def test_loss_goes_down_and_checkpoints_are_written_when_training_on_32_images(transformer, shapes_cache, tmp_path):
    result = train(transformer, shapes_cache, SMOKE, QWEN_IMAGE, tmp_path)
    losses = [line["loss"] for line in Logbook(tmp_path / LOSS_LOG).read()]
    assert result.finished and result.step == 40 and len(losses) == 8
    assert losses[-1] < 0.8 * losses[0]
    assert [step for step, _ in checkpoint.checkpoints(tmp_path / CHECKPOINTS)] == [20, 40]
    ema = trained_weights(tmp_path)
    raw = trained_weights(tmp_path, use_ema=False)
    name = "proj_out.weight"
    assert torch.equal(raw[name], transformer.state_dict()[name]) and not torch.equal(ema[name], raw[name])


def test_resumed_run_ends_with_the_weights_and_log_of_the_uninterrupted_run(tiny_model, shapes_cache, tmp_path):
    config = TrainConfig(**{**SMOKE.to_dict(), "steps": 12, "checkpoint_every": 4, "log_every": 2})
    whole = copy.deepcopy(tiny_model.modules.transformer)
    train(whole, shapes_cache, config, QWEN_IMAGE, tmp_path / "whole")

    first = copy.deepcopy(tiny_model.modules.transformer)
    stopped = train(first, shapes_cache, config, QWEN_IMAGE, tmp_path / "split", should_stop=lambda step: step == 6)
    assert not stopped.finished and stopped.step == 6
    torch.manual_seed(1234)  # whatever happened to the global RNG meanwhile must not matter
    second = copy.deepcopy(tiny_model.modules.transformer)  # a fresh process would start from the init too
    resumed = train(second, shapes_cache, config, QWEN_IMAGE, tmp_path / "split")
    assert resumed.resumed_from == 6 and resumed.finished

    for name, tensor in whole.state_dict().items():
        assert torch.equal(second.state_dict()[name], tensor), name
    assert torch.equal(trained_weights(tmp_path / "split")["img_in.weight"], trained_weights(tmp_path / "whole")["img_in.weight"])
    strip = lambda lines: [(line["step"], line["loss"]) for line in lines]  # noqa: E731 (elapsed_s differs)
    assert strip(Logbook(tmp_path / "split" / LOSS_LOG).read()) == strip(Logbook(tmp_path / "whole" / LOSS_LOG).read())


def test_error_raised_if_a_checkpoint_is_resumed_with_other_settings(transformer, shapes_cache, tmp_path):
    config = TrainConfig(steps=2, batch_size=4, checkpoint_every=1, log_every=1)
    train(transformer, shapes_cache, config, QWEN_IMAGE, tmp_path)
    changed = TrainConfig(steps=4, batch_size=8, checkpoint_every=1, log_every=1)
    with pytest.raises(checkpoint.CheckpointError, match="batch_size"):
        train(transformer, shapes_cache, changed, QWEN_IMAGE, tmp_path)


def test_every_example_is_seen_once_per_epoch():
    config = TrainConfig(steps=10, batch_size=8, seed=5)
    seen = torch.cat([batch_indices(config, 32, step) for step in range(4)])
    assert sorted(seen.tolist()) == list(range(32))
    assert not torch.equal(batch_indices(config, 32, 4), batch_indices(config, 32, 0))  # a new order each epoch


def test_processes_take_disjoint_slices_of_each_global_batch():
    config = TrainConfig(steps=10, batch_size=4)
    slices = [batch_indices(config, 32, step=1, process=rank, processes=2) for rank in range(2)]
    assert not set(slices[0].tolist()) & set(slices[1].tolist())


def test_learning_rate_warms_up_then_follows_the_cosine_to_its_floor():
    config = TrainConfig(steps=100, learning_rate=1.0, warmup_steps=10, lr_schedule=LrSchedule.COSINE, min_lr_ratio=0.1)
    assert learning_rate_at(config, 0) == pytest.approx(0.1)
    assert learning_rate_at(config, 10) == pytest.approx(1.0)
    assert learning_rate_at(config, 55) == pytest.approx(0.55)
    assert learning_rate_at(config, 100) == pytest.approx(0.1)
    constant = TrainConfig(steps=100, learning_rate=1.0)
    assert {learning_rate_at(constant, step) for step in (0, 50, 99)} == {1.0}


@pytest.mark.parametrize("sampling", list(TimestepSampling))
def test_sampled_sigmas_lie_in_the_unit_interval(sampling):
    config = TrainConfig(steps=1, timestep_sampling=sampling)
    sigmas = sample_sigmas(config, QWEN_IMAGE, 64, 4096, torch.Generator().manual_seed(0))
    assert sigmas.dtype == torch.float32 and 0 < sigmas.min() and sigmas.max() <= 1
    assert 0.3 < float(sigmas.mean()) < 0.7


def test_the_caches_loss_weights_reach_the_loss(transformer, shapes_cache, tmp_path):
    from dataclasses import replace

    config = TrainConfig(steps=2, batch_size=8, learning_rate=1e-3, checkpoint_every=2, log_every=1)
    unweighted = train(copy.deepcopy(transformer), shapes_cache, config, QWEN_IMAGE, tmp_path / "plain")
    silenced = replace(shapes_cache, loss_weights=torch.zeros(32, 8, 8))  # every position weighs nothing
    weighted = train(transformer, silenced, config, QWEN_IMAGE, tmp_path / "silenced")
    assert unweighted.last_loss > 0.1 and weighted.last_loss == 0.0
