"""The flow-matching training loop, on accelerate: the same code runs on a CPU, one GPU, or several under
`accelerate launch` (each process takes its own slice of every global batch; accelerate syncs gradients).

Randomness is a pure function of (seed, step): the data order of each epoch comes from a generator seeded
with the epoch, and the noise, noise levels and caption dropout of a step from one seeded with the step.
Those are drawn for the whole global batch and each process keeps its slice, so n processes with batch b
train exactly as one process with batch n*b, and a run resumed from a checkpoint draws exactly what the
uninterrupted run would have.

TrainMode.FULL trains every weight; TrainMode.LORA injects a peft adapter (unless the caller did, e.g. to
store the base in fp8 around it) and trains and checkpoints only the adapter.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from engine.schedulers.flow_match import FlowMatchConfig
from engine.training import adapter, checkpoint, seeding
from engine.training.caching import TrainingCache
from engine.training.config import LrSchedule, TrainConfig, TrainMode
from engine.training.ema import Ema
from engine.training.logbook import Logbook
from engine.training.objective import flow_matching_loss, image_seq_len, sample_noise_levels

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
LOSS_LOG = "loss.jsonl"
# Fields a resumed run may change: how long it runs, how often it reports, how it saves memory. The rest shape
# what it draws or learns.
_RESUMABLE_CHANGES = {"steps", "checkpoint_every", "keep_checkpoints", "log_every", "gradient_checkpointing"}


class BatchSource(Protocol):
    """Where batches come from: the cache to read and the examples in it that `process` trains on at `step`."""

    def __len__(self) -> int: ...

    def pick(self, config: TrainConfig, step: int, process: int = 0, processes: int = 1
             ) -> tuple[TrainingCache, torch.Tensor]: ...


class SingleCache:
    """One cache of same-sized images (the shapes world's build), in batch_indices' order."""

    def __init__(self, cache: TrainingCache):
        self.cache = cache

    def __len__(self) -> int:
        return len(self.cache)

    def pick(self, config: TrainConfig, step: int, process: int = 0, processes: int = 1
             ) -> tuple[TrainingCache, torch.Tensor]:
        return self.cache, batch_indices(config, len(self.cache), step, process, processes)


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


def process_state():
    """accelerate's view of the processes of this run. Several processes on a machine without a GPU (torchrun,
    `accelerate launch --multi_gpu` there, the shapes world's parallel build) are CPU processes over gloo;
    accelerate's Accelerator infers that from ACCELERATE_USE_CPU only, so it is said here, before an Accelerator
    shares this state."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or (several and not torch.cuda.is_available()))


def _forget_another_precision(precision: str) -> None:
    """accelerate keeps one AcceleratorState per process and refuses an Accelerator of another mixed precision
    ("AcceleratorState has already been initialized"); a process that trains twice (the studio, a test session)
    may ask for bf16 after float32. The processes themselves (PartialState) stay as they are."""
    from accelerate.state import AcceleratorState

    shared = AcceleratorState._shared_state
    if shared and shared.get("_mixed_precision", precision) != precision:
        AcceleratorState._reset_state()


def step_generator(config: TrainConfig, step: int, process: int = 0) -> torch.Generator:
    """The generator of a step's noise, noise levels and caption dropout (drawn for the global batch, so the
    loop asks for process 0 on every process)."""
    return seeding.generator(config.seed, 2, step, process)


def _check_resumable(config: TrainConfig, saved: dict, path: Path) -> None:
    current = config.to_dict()
    changed = sorted(key for key, value in saved.items()
                     if key not in _RESUMABLE_CHANGES and current.get(key) != value)
    if changed:
        raise checkpoint.CheckpointError(
            f"The checkpoint {path} was made with other settings ({', '.join(changed)}); resuming it would not "
            "continue the same run.", "Use the same settings, or a new output folder to start afresh.")


def _check_processes(saved: int | None, processes: int, path: Path) -> None:
    if saved is not None and saved != processes:
        raise checkpoint.CheckpointError(
            f"The checkpoint {path} was made by {saved} process(es), this run has {processes}; the global batch "
            "and so the run would change.", f"Resume with {saved} process(es).")


def _trainable(transformer: torch.nn.Module, config: TrainConfig) -> list[torch.nn.Parameter]:
    """Make the parameters of config.mode trainable (injecting the LoRA adapter if absent) and return them."""
    if config.mode is TrainMode.LORA:
        if not adapter.has_lora(transformer):
            adapter.add_lora(transformer, config.lora_rank, config.lora_alpha, config.lora_targets, config.seed)
        return list(adapter.trainable_state(transformer).values())
    transformer.requires_grad_(True)
    return list(transformer.parameters())


@dataclass(frozen=True)
class Sampler:
    """Called every `every` steps on the main process with the step and the model as it is then."""

    every: int
    make: Callable[[int, torch.nn.Module], None]


def train(transformer: torch.nn.Module, cache: TrainingCache | BatchSource, config: TrainConfig,
          schedule: FlowMatchConfig, output_dir: Path, progress: Callable[[TrainProgress], None] | None = None,
          should_stop: Callable[[int], bool] | None = None, sampler: Sampler | None = None) -> TrainResult:
    """Train `transformer` (every weight, or a LoRA adapter: config.mode) on cached latents and prompts.

    Resumes from the newest checkpoint in output_dir/checkpoints when there is one. Writes a checkpoint every
    config.checkpoint_every steps and at the end, and the loss log output_dir/loss.jsonl. should_stop(step) is
    asked after every step (under several processes, any one saying yes stops all); when it says yes the loop
    saves a checkpoint and returns.
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    output_dir = Path(output_dir)
    process_state()
    source: BatchSource = SingleCache(cache) if isinstance(cache, TrainingCache) else cache
    _forget_another_precision(config.mixed_precision)
    # The last block's text-stream output is discarded by the model, so its text weights (and their LoRA) get no
    # gradient; DDP must be told to expect that, or it waits for them and fails on the next step.
    accelerator = Accelerator(mixed_precision=config.mixed_precision,
                              gradient_accumulation_steps=config.gradient_accumulation,
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    parameters = _trainable(transformer, config)
    if config.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    transformer.train()
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay,
                                  betas=(config.adam_beta1, config.adam_beta2))
    ema = Ema(transformer, config.ema_decay) if config.ema_decay > 0 else None
    logbook = Logbook(output_dir / LOSS_LOG)
    process, processes = accelerator.process_index, accelerator.num_processes

    start = 0
    interval: list[float] = []  # losses since the last log line; kept in checkpoints so the log resumes exactly
    saved = checkpoint.latest(output_dir / CHECKPOINTS)
    if saved is not None:
        state = checkpoint.load(saved)
        _check_resumable(config, state.state.get("config", {}), saved)
        _check_processes(state.state.get("processes"), processes, saved)
        if config.mode is TrainMode.LORA:
            adapter.load_trainable_state(transformer, state.modules["lora"])
        else:
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

    def save(step: int) -> Path:
        path = checkpoint.folder_for(output_dir / CHECKPOINTS, step)
        if accelerator.is_main_process:
            if config.mode is TrainMode.LORA:
                modules = {"lora": adapter.trainable_state(unwrapped)}  # the frozen base is in the model's files
            else:
                modules = {"model": unwrapped.state_dict()}
            if ema is not None:
                modules["ema"] = ema.state_dict()
            run_state = {"config": config.to_dict(), "interval": interval, "processes": processes}
            checkpoint.save(output_dir / CHECKPOINTS, step, modules, optimizer.state_dict(), run_state,
                            keep=config.keep_checkpoints)
        accelerator.wait_for_everyone()
        return path

    def micro_step_loss(micro: int) -> torch.Tensor:
        """Loss of this process's slice of global micro-batch `micro`, its draws made for the whole batch."""
        part, indices = source.pick(config, micro, process, processes)
        latents = part.latents[indices]
        count = len(indices) * processes
        generator = step_generator(config, micro)
        noise = torch.randn((count, *latents.shape[1:]), generator=generator)
        sigmas, weights = sample_noise_levels(config, schedule, image_seq_len(latents), count, generator)
        dropped = torch.rand(count, generator=generator) < config.caption_dropout
        mine = slice(process * len(indices), (process + 1) * len(indices))
        embeds, mask = part.text_batch(indices, dropped[mine])
        position_weights = part.loss_weights[indices] if part.loss_weights is not None else None
        device = accelerator.device
        with accelerator.autocast():
            return flow_matching_loss(model, latents.to(device), noise[mine].to(device), sigmas[mine].to(device),
                                      embeds.to(device), mask.to(device) if mask is not None else None,
                                      weights[mine] if weights is not None else None, position_weights)

    began = time.monotonic()
    last_loss = math.nan
    step = start
    last_saved = saved
    accumulation = config.gradient_accumulation
    while step < config.steps:
        learning_rate = learning_rate_at(config, step)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate
        losses = []
        for micro in range(step * accumulation, (step + 1) * accumulation):
            with accelerator.accumulate(model):
                loss = micro_step_loss(micro)
                accelerator.backward(loss)
                if accelerator.sync_gradients and config.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()  # accelerate makes these no-ops until the last micro-batch of the step
                optimizer.zero_grad(set_to_none=True)
            losses.append(accelerator.gather(loss.detach()[None]).mean())
        if ema is not None:
            ema.update(unwrapped, step)
        step += 1
        interval.append(float(torch.stack(losses).mean()))

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
        if sampler is not None and step % sampler.every == 0:
            if accelerator.is_main_process:
                with accelerator.autocast():
                    sampler.make(step, unwrapped)
            accelerator.wait_for_everyone()
        stop = should_stop is not None and should_stop(step)
        if processes > 1:  # a signal or STOP file seen by one process stops all at the same step
            stop = bool(accelerator.reduce(torch.tensor([int(stop)], device=accelerator.device), "sum").item())
        if step % config.checkpoint_every == 0 or step == config.steps or stop:
            last_saved = save(step)
        if stop:
            break
    if last_saved is None:  # nothing to do: steps already reached, and no checkpoint was found
        last_saved = save(step)
    return TrainResult(step=step, finished=step >= config.steps, resumed_from=start, last_loss=last_loss,
                       wall_s=time.monotonic() - began, checkpoint=last_saved)


def trained_weights(output_dir: Path, use_ema: bool = True) -> dict[str, torch.Tensor]:
    """The newest checkpoint's weights: the EMA copy when the run kept one and use_ema, else the raw ones
    (for a LoRA run, the adapter's parameters by their names in the model)."""
    saved = checkpoint.latest(Path(output_dir) / CHECKPOINTS)
    if saved is None:
        raise checkpoint.CheckpointError(f"No checkpoint in {Path(output_dir) / CHECKPOINTS}.")
    modules = checkpoint.load(saved, restore_rng=False).modules
    if use_ema and "ema" in modules:
        return modules["ema"]
    return modules["lora"] if "lora" in modules else modules["model"]
