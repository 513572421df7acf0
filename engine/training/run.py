"""`python -m engine train --config run.toml`: one training run from a run.toml, start to finish.

In order: check the output folder (a fresh start refuses a folder holding a run; --resume needs one) ->
read the dataset and sort it into buckets -> encode every image and caption once (and record the sample
prompts' text-encoder outputs), cached on disk in <output>/cache -> let the encoders go -> load the
transformer, add the LoRA, store the frozen base in fp8 where that pays -> train (engine.training.loop),
with samples every sample_every steps -> write the LoRA (or, for full training, the transformer).

status.json says where the run is at every log line; a STOP file or SIGTERM/SIGINT stops it after the
current step with a checkpoint and the LoRA so far. Under `accelerate launch` every process runs this; the
first one encodes while the others wait, then they read its cache, and only it writes files.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import math
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import torch

from engine.errors import EngineError
from engine.training import checkpoint
from engine.training.bucketed import BucketedCache, EncodeOnTheFly
from engine.training.buckets import MULTIPLE, Buckets
from engine.training.caching import Encoders
from engine.training.config import TrainConfig, TrainMode
from engine.training.data import open_dataset
from engine.training.loop import CHECKPOINTS, Sampler, TrainProgress, process_state, train
from engine.training.run_config import Fp8Base, RunConfig, read_run_config
from engine.training.samples import SAMPLES_DIR, RecordedTextEncoder, SampleSpec, make_samples
from engine.training.status import RunState, RunStatus, write_status
from engine.training.stopping import StopRequest

logger = logging.getLogger(__name__)

CACHE_DIR = "cache"
PROMPTS_FILE = "sample-prompts.safetensors"

Say = Callable[[str], None]


class TrainError(EngineError):
    """A training run cannot start or continue as configured."""


def run_from_file(path: Path, resume: bool = False, say: Say = logger.info) -> RunStatus:
    """Read a run.toml and run it; the final status (finished or stopped). Errors raise after status.json says
    "failed" with their message."""
    return run_training(read_run_config(path), resume=resume, say=say)


def with_trigger(caption: str, trigger: str) -> str:
    """The caption with the trigger word in front, unless it already contains it (as a word)."""
    if not trigger or trigger.lower() in caption.lower().replace(",", " ").split():
        return caption
    return f"{trigger} {caption}"


def run_training(config: RunConfig, resume: bool = False, say: Say = logger.info) -> RunStatus:
    state = process_state()
    run = _Run(config, state.is_main_process, say)
    with StopRequest(config.output_dir) as stop:
        try:
            return run.execute(state, resume, stop)
        except EngineError as error:
            run.publish(state=RunState.FAILED, message=str(error))
            raise
        except torch.OutOfMemoryError:
            error = TrainError("Training ran out of memory.", "Lower batch_size or resolution, or turn on "
                               "gradient_checkpointing; with a GPU that has fp8, keep fp8_base on.")
            run.publish(state=RunState.FAILED, message=str(error))
            raise error from None
        except KeyboardInterrupt:  # a second Ctrl-C: no time to save
            run.publish(state=RunState.FAILED, message="Interrupted mid-step; the newest checkpoint is kept.")
            raise
        except Exception as error:  # a bug: the watcher still learns that the run is over, then the traceback
            run.publish(state=RunState.FAILED, message=f"Internal error: {type(error).__name__}: {error}")
            raise


class _Run:
    """One run's state shared by its phases: the settings, the status as last written, who writes files."""

    def __init__(self, config: RunConfig, main: bool, say: Say):
        self.config, self.main = config, main
        self.say: Say = say if main else (lambda text: None)
        self.out = config.output_dir
        self.status = RunStatus(RunState.RUNNING, total=config.train.steps, message="starting")
        self.resolution = config.dataset.resolution

    def publish(self, **changes: Any) -> None:
        self.status = self.status.with_(**changes)
        if self.main:
            write_status(self.out, self.status)

    def execute(self, state: Any, resume: bool, stop: StopRequest) -> RunStatus:
        from engine.api import resolve_preset
        from engine.sources import resolve

        config = self.config
        start = self.check_output(resume)
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            stop.clear()  # a STOP left from an earlier run would end this one at its first step
            if start == 0:
                for old in (self.out / SAMPLES_DIR).glob("*.png"):
                    old.unlink()
        earlier_lora = str(config.lora_path) if start > 0 and config.lora_path.is_file() else None
        self.publish(step=start, samples=self.existing_samples(), lora=earlier_lora, message="preparing")
        preset = resolve_preset(config.model.target)
        components = resolve(preset, config.model.models_dir)
        device = state.device
        dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
        train_config = replace(config.train, mixed_precision=self.precision(device))
        resolution = config.dataset.resolution or max(MULTIPLE, preset.defaults.width // MULTIPLE * MULTIPLE)
        self.resolution = resolution

        dataset = open_dataset(config.dataset.path, config.dataset.alpha_mask)
        buckets = Buckets.assign([dataset.image_size(index) for index in range(len(dataset))], resolution)
        shapes = ", ".join(f"{w}x{h} ({len(m)})" for (w, h), m in zip(buckets.sizes, buckets.members))
        self.say(f"dataset: {len(dataset)} images from {config.dataset.path}, buckets {shapes}")
        caption = partial(with_trigger, trigger=config.trigger_word)
        negative = preset.defaults.negative_prompt
        prompts = list(config.samples.prompts) + [negative] if config.samples.enabled else []

        encoders = _LazyEncoders(components, device, dtype, self.say)
        with state.main_process_first():  # the first process encodes; the others then read its files
            key = self.cache_key(components, dataset, resolution)
            if config.dataset.cache:
                source = BucketedCache.load_or_build(self.out / CACHE_DIR, key, buckets, dataset, encoders.get,
                                                     config.dataset.repeats, caption, self.cache_progress)
            else:
                source = EncodeOnTheFly(buckets, dataset, encoders.get(), config.dataset.repeats, caption)
            recording = self.recorded_prompts(key, prompts, encoders) if prompts else None
        if config.dataset.cache:
            encoders.release()
        if stop.requested and state.num_processes == 1:  # several processes agree on stopping in the loop only
            return self.finish(None, start, stop, stopped=True)

        transformer = self.load_transformer(components, device, dtype, train_config)
        sampler = None
        if recording is not None:
            sampler = self.sampler(preset, components, transformer, recording, resolution, device, dtype)
        result = train(transformer, source, train_config, _schedule(components), self.out,
                       progress=self.progress, should_stop=stop, sampler=sampler)
        state.wait_for_everyone()
        return self.finish(transformer, result.step, stop, stopped=not result.finished, base_model=preset.name)

    def check_output(self, resume: bool) -> int:
        """The step the run starts from; TrainError if the folder holds a run and this is no resume, or the reverse."""
        found = checkpoint.checkpoints(self.out / CHECKPOINTS)
        if found and not resume:
            raise TrainError(f"{self.out} holds a run that reached step {found[-1][0]}.",
                             "Resume it (--resume), or choose another output folder to start afresh.")
        if resume and not found:
            raise TrainError(f"There is no checkpoint to resume in {self.out / CHECKPOINTS}.",
                             "Start the run without --resume.")
        return found[-1][0] if found else 0

    def existing_samples(self) -> tuple[str, ...]:
        return tuple(f"{SAMPLES_DIR}/{path.name}" for path in sorted((self.out / SAMPLES_DIR).glob("step-*.png")))

    def precision(self, device: torch.device) -> str:
        if self.config.mixed_precision != "auto":
            return self.config.mixed_precision
        return "bf16" if device.type == "cuda" else "no"

    def cache_key(self, components: dict, dataset: Any, resolution: int) -> str:
        """What the cached tensors depend on: the images (name, size, time), captions, size and encoders."""
        from engine.presets import Role

        files = [(name, caption) for name, caption in getattr(dataset, "rows", [])]
        stats = [(name, (dataset.folder / name).stat().st_size, (dataset.folder / name).stat().st_mtime_ns)
                 for name, _ in files]
        encoders = [str(components[role].folder.resolve()) for role in (Role.TEXT_ENCODER, Role.VAE, Role.TOKENIZER)]
        text = json.dumps({"rows": files, "stats": stats, "resolution": resolution, "encoders": encoders,
                           "trigger": self.config.trigger_word, "alpha_mask": self.config.dataset.alpha_mask},
                          sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def cache_progress(self, stage: str, done: int, total: int) -> None:
        self.say(f"cache: {stage} {done}/{total}")

    def recorded_prompts(self, key: str, prompts: list[str], encoders: _LazyEncoders) -> RecordedTextEncoder:
        path = self.out / CACHE_DIR / PROMPTS_FILE
        prompts_key = f"{key}|{json.dumps(prompts)}"
        recording = RecordedTextEncoder.load(path, prompts_key) if self.config.dataset.cache else None
        if recording is None:
            recording = RecordedTextEncoder.record(encoders.get(), prompts)
            if self.main:
                path.parent.mkdir(parents=True, exist_ok=True)
                recording.save(path, prompts_key)
        return recording

    def load_transformer(self, components: dict, device: torch.device, dtype: torch.dtype,
                         train_config: TrainConfig) -> torch.nn.Module:
        from diffusers import QwenImageTransformer2DModel

        from engine.loading import load_diffusers_module
        from engine.presets import Role
        from engine.training import adapter

        if train_config.mode is not TrainMode.LORA:
            if self.config.fp8_base is Fp8Base.ON:
                self.say("fp8_base: not used in full training (every weight trains)")
            # Weights that train stay float32 (the optimizer's updates are far below bf16's resolution);
            # mixed precision computes in bf16 on a GPU.
            return load_diffusers_module(QwenImageTransformer2DModel, components[Role.TRANSFORMER], torch.float32,
                                         device)
        transformer = load_diffusers_module(QwenImageTransformer2DModel, components[Role.TRANSFORMER], dtype, device)
        adapter.add_lora(transformer, train_config.lora_rank, train_config.lora_alpha, train_config.lora_targets,
                         train_config.seed)
        fp8 = self.config.fp8_base
        if device.type != "cuda":
            if fp8 is not Fp8Base.OFF:
                self.say(f"fp8_base {fp8.value}: off on the {device.type.upper()} (fp8 storage needs a GPU)")
        elif fp8 is Fp8Base.ON or (fp8 is Fp8Base.AUTO and adapter.supports_fp8_compute(device)):
            adapter.store_base_in_fp8(transformer, dtype)
            self.say("fp8_base: frozen base weights stored in float8_e4m3fn, computed in bfloat16")
        return transformer

    def sampler(self, preset: Any, components: dict, transformer: torch.nn.Module, recording: RecordedTextEncoder,
                resolution: int, device: torch.device, dtype: torch.dtype) -> Sampler:
        from diffusers import AutoencoderKLQwenImage

        from engine.loading import QwenImageModules, load_diffusers_module, load_tokenizer
        from engine.metadata import parameters_for
        from engine.presets import Role

        samples = self.config.samples
        # The VAE that encoded the dataset has gone with the text encoder; this copy only decodes samples, and
        # waits on the CPU between them so that it takes no GPU memory from training.
        vae = load_diffusers_module(AutoencoderKLQwenImage, components[Role.VAE], dtype, torch.device("cpu"))
        tokenizer = load_tokenizer(components[Role.TOKENIZER])
        spec = SampleSpec(width=resolution, height=resolution, steps=samples.steps, cfg=preset.defaults.cfg,
                          negative_prompt=preset.defaults.negative_prompt, seed=self.config.train.seed)

        current = {"step": 0}

        def parameters(settings, seed: int) -> dict:
            data = parameters_for(settings, preset.name, seed, loras=[])  # the LoRA is in the model, not a file yet
            data["training"] = {"run": self.config.name, "step": current["step"]}
            return data

        def make(step: int, model: torch.nn.Module) -> None:
            current["step"] = step
            modules = QwenImageModules(transformer=model, vae=vae.to(device), text_encoder=recording,
                                       tokenizer=tokenizer, schedule=_schedule(components), device=device, dtype=dtype)
            try:
                written = make_samples(modules, samples.prompts, spec, self.out, step, parameters)
            finally:
                vae.to("cpu")
            known = [name for name in self.status.samples if name not in written]
            self.publish(samples=tuple(known + written))
            self.say(f"samples: {', '.join(written)}")

        return Sampler(every=samples.every, make=make)

    def progress(self, report: TrainProgress) -> None:
        self.say(f"step {report.step}/{report.total}  loss {report.loss:.4f}  lr {report.learning_rate:.2e}  "
                 f"eta {_duration(report.eta_s)}")
        self.publish(step=report.step, total=report.total, loss=report.loss, eta_s=report.eta_s,
                     message=f"training, step {report.step} of {report.total}")

    def finish(self, transformer: torch.nn.Module | None, step: int, stop: StopRequest, stopped: bool,
               base_model: str = "") -> RunStatus:
        """Write the LoRA (or full weights) as they are now; status finished or stopped; STOP removed."""
        from engine.lora.files import save_lora
        from engine.training import adapter

        config = self.config
        lora = None
        if transformer is not None and self.main:
            if config.train.mode is TrainMode.LORA:
                lora = save_lora(config.lora_path, adapter.lora_state_dict(transformer), rank=config.train.lora_rank,
                                 alpha=config.train.lora_alpha, base_model=base_model,
                                 trigger_words=[config.trigger_word] if config.trigger_word else [], steps=step,
                                 extra={"resolution": str(self.resolution),
                                        "timestep_sampling": config.train.timestep_sampling.value})
                self.say(f"LoRA written to {lora}")
            else:
                folder = self.out / f"{config.name}-transformer"
                transformer.save_pretrained(folder, safe_serialization=True)
                self.say(f"transformer written to {folder}")
        state = RunState.STOPPED if stopped else RunState.FINISHED
        message = (f"stopped at step {step} of {config.train.steps}" if stopped
                   else f"finished {step} steps")
        if self.main:
            stop.clear()
        self.publish(state=state, step=step, message=message, eta_s=None if stopped else 0.0,
                     lora=str(lora) if lora is not None else self.status.lora)
        self.say(message)
        return self.status


class _LazyEncoders:
    """The tokenizer, text encoder and VAE, loaded on first use only (a complete cache never needs them)."""

    def __init__(self, components: dict, device: torch.device, dtype: torch.dtype, say: Say):
        self.components, self.device, self.dtype, self.say = components, device, dtype, say
        self.encoders: Encoders | None = None
        self._frames: Any = None

    def get(self) -> Encoders:
        if self.encoders is None:
            from diffusers import AutoencoderKLQwenImage

            from engine.loading import load_diffusers_module, load_text_encoder, load_tokenizer
            from engine.presets import Role
            from engine.training.single_frame import single_frame_convs

            self.say("loading the text encoder and VAE to encode the dataset")
            vae = load_diffusers_module(AutoencoderKLQwenImage, self.components[Role.VAE], self.dtype, self.device)
            self._frames = single_frame_convs(vae)  # images are one frame: the video VAE's 3D convs run as 2D
            self._frames.__enter__()
            self.encoders = Encoders(tokenizer=load_tokenizer(self.components[Role.TOKENIZER]),
                                     text_encoder=load_text_encoder(self.components[Role.TEXT_ENCODER], self.dtype,
                                                                    self.device),
                                     vae=vae, device=self.device, dtype=self.dtype)
        return self.encoders

    def release(self) -> None:
        """Let the encoders go and give their memory back before the transformer loads."""
        if self.encoders is None:
            return
        self._frames.__exit__(None, None, None)
        self._frames = self.encoders = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        self.say("text encoder and VAE released")


def _schedule(components: dict):
    from engine.loading import load_schedule

    return load_schedule(components)


def _duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
