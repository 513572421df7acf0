"""The flow-matching training loop, on accelerate: the same code runs on a CPU, one GPU, or several under
`accelerate launch` (each process takes its own slice of every global batch; accelerate syncs gradients).

Randomness is a pure function of (seed, step, process): the data order of each epoch comes from a generator
seeded with the epoch, and the noise, noise levels and caption dropout of a step from one seeded with the
step. A run resumed from a checkpoint therefore draws exactly what the uninterrupted run would have.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.schedulers.flow_match import FlowMatchConfig
from engine.training import checkpoint, seeding
from engine.training.caching import TrainingCache
from engine.training.config import LrSchedule, TrainConfig
from engine.training.ema import Ema
from engine.training.logbook import Logbook
from engine.training.objective import flow_matching_loss, image_seq_len, sample_sigmas

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
LOSS_LOG = "loss.jsonl"
# Fields a resumed run may change: how long it runs and how often it reports. The rest shape what it draws.
_RESUMABLE_CHANGES = {"steps", "checkpoint_every", "keep_checkpoints", "log_every"}


@dataclass(frozen=True)
class TrainProgress:
    step: int  # steps done
    total: int
    loss: float  # mean over the steps since the last report
    learning_rate: float
    elapsed_s: float  # since this process started or resumed the run
    eta_s: float


@dataclass(frozen=True)
class TrainResult:
    step: int  # steps done when the loop returned
    finished: bool  # False when should_stop ended it early
    resumed_from: int  # 0 for a fresh run
    last_loss: float
    wall_s: float
    checkpoint: Path


def learning_rate_at(config: TrainConfig, step: int) -> float:
    """Linear warmup over warmup_steps, then constant or cosine down to min_lr_ratio at the last step."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    if config.lr_schedule is LrSchedule.CONSTANT:
        return config.learning_rate
    span = max(config.steps - config.warmup_steps, 1)
    progress = min((step - config.warmup_steps) / span, 1.0)
    floor = config.min_lr_ratio
    return config.learning_rate * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def batch_indices(config: TrainConfig, dataset_size: int, step: int, process: int = 0, processes: int = 1
                  ) -> torch.Tensor:
    """The examples process `process` trains on at `step`: epochs are seeded permutations of the dataset."""
    start = (step * processes + process) * config.batch_size
    positions = torch.arange(start, start + config.batch_size)
    epochs = positions // dataset_size
    indices = torch.empty_like(positions)
    for epoch in epochs.unique().tolist():
        order = torch.randperm(dataset_size, generator=seeding.generator(config.seed, 1, epoch))
        chosen = epochs == epoch
        indices[chosen] = order[positions[chosen] % dataset_size]
    return indices


def step_generator(config: TrainConfig, step: int, process: int = 0) -> torch.Generator:
    return seeding.generator(config.seed, 2, step, process)


def _check_resumable(config: TrainConfig, saved: dict, path: Path) -> None:
    current = config.to_dict()
    changed = sorted(key for key, value in saved.items()
                     if key not in _RESUMABLE_CHANGES and current.get(key) != value)
    if changed:
        raise checkpoint.CheckpointError(
            f"The checkpoint {path} was made with other settings ({', '.join(changed)}); resuming it would not "
            "continue the same run.", "Use the same settings, or a new output folder to start afresh.")


def train(transformer: torch.nn.Module, cache: TrainingCache, config: TrainConfig, schedule: FlowMatchConfig,
          output_dir: Path, progress: Callable[[TrainProgress], None] | None = None,
          should_stop: Callable[[int], bool] | None = None) -> TrainResult:
    """Train `transformer` (every weight: TrainMode.FULL) on the cached latents and prompts.

    Resumes from the newest checkpoint in output_dir/checkpoints when there is one. Writes a checkpoint every
    config.checkpoint_every steps and at the end, and the loss log output_dir/loss.jsonl. should_stop(step) is
    asked after every step; when it says yes the loop saves a checkpoint and returns.
    """
    from accelerate import Accelerator

    output_dir = Path(output_dir)
    accelerator = Accelerator(mixed_precision=config.mixed_precision)
    transformer.requires_grad_(True).train()
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay,
                                  betas=(config.adam_beta1, config.adam_beta2))
    ema = Ema(transformer, config.ema_decay) if config.ema_decay > 0 else None
    logbook = Logbook(output_dir / LOSS_LOG)

    start = 0
    interval: list[float] = []  # losses since the last log line; kept in checkpoints so the log resumes exactly
    saved = checkpoint.latest(output_dir / CHECKPOINTS)
    if saved is not None:
        state = checkpoint.load(saved)
        _check_resumable(config, state.state.get("config", {}), saved)
        transformer.load_state_dict(state.modules["model"])
        if ema is not None:
            ema.load_state_dict(state.modules["ema"])
        optimizer.load_state_dict(state.optimizer)
        start = state.step
        interval = list(state.state.get("interval", []))
        logger.info("Resuming from %s (step %d of %d)", saved, start, config.steps)
    if accelerator.is_main_process:
        logbook.rewind(start)

    model, optimizer = accelerator.prepare(transformer, optimizer)
    unwrapped = accelerator.unwrap_model(model)
    tokens = image_seq_len(cache.latents)
    process, processes = accelerator.process_index, accelerator.num_processes

    def save(step: int) -> Path:
        path = checkpoint.folder_for(output_dir / CHECKPOINTS, step)
        if accelerator.is_main_process:
            modules = {"model": unwrapped.state_dict()}
            if ema is not None:
                modules["ema"] = ema.state_dict()
            checkpoint.save(output_dir / CHECKPOINTS, step, modules, optimizer.state_dict(),
                            {"config": config.to_dict(), "interval": interval}, keep=config.keep_checkpoints)
        accelerator.wait_for_everyone()
        return path

    began = time.monotonic()
    last_loss = math.nan
    step = start
    last_saved = saved
    while step < config.steps:
        learning_rate = learning_rate_at(config, step)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate
        indices = batch_indices(config, len(cache), step, process, processes)
        generator = step_generator(config, step, process)
        latents = cache.latents[indices]
        noise = torch.randn(latents.shape, generator=generator)
        sigmas = sample_sigmas(config, schedule, tokens, len(indices), generator)
        dropped = torch.rand(len(indices), generator=generator) < config.caption_dropout
        embeds, mask = cache.text_batch(indices, dropped)
        device = accelerator.device
        with accelerator.autocast():
            loss = flow_matching_loss(model, latents.to(device), noise.to(device), sigmas.to(device),
                                      embeds.to(device), mask.to(device) if mask is not None else None)
        accelerator.backward(loss)
        if config.max_grad_norm > 0:
            accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update(unwrapped, step)
        step += 1
        interval.append(float(accelerator.gather(loss.detach()[None]).mean()))

        if step % config.log_every == 0 or step == config.steps:
            last_loss = sum(interval) / len(interval)
            elapsed = time.monotonic() - began
            rate = (step - start) / elapsed if elapsed > 0 else 0.0
            if accelerator.is_main_process:
                logbook.write(step=step, loss=round(last_loss, 6), lr=learning_rate, elapsed_s=round(elapsed, 2))
            if progress is not None:
                progress(TrainProgress(step, config.steps, last_loss, learning_rate, elapsed,
                                       (config.steps - step) / rate if rate else math.inf))
            interval = []
        stop = should_stop is not None and should_stop(step)
        if step % config.checkpoint_every == 0 or step == config.steps or stop:
            last_saved = save(step)
        if stop:
            break
    if last_saved is None:  # nothing to do: steps already reached, and no checkpoint was found
        last_saved = save(step)
    return TrainResult(step=step, finished=step >= config.steps, resumed_from=start, last_loss=last_loss,
                       wall_s=time.monotonic() - began, checkpoint=last_saved)


def trained_weights(output_dir: Path, use_ema: bool = True) -> dict[str, torch.Tensor]:
    """The newest checkpoint's weights: the EMA copy when the run kept one and use_ema, else the raw ones."""
    saved = checkpoint.latest(Path(output_dir) / CHECKPOINTS)
    if saved is None:
        raise checkpoint.CheckpointError(f"No checkpoint in {Path(output_dir) / CHECKPOINTS}.")
    modules = checkpoint.load(saved, restore_rng=False).modules
    return modules["ema"] if use_ema and "ema" in modules else modules["model"]
