"""`python -m engine.toyworld train`: make every file of the tiny-shapes model from nothing but a seed.

Stages, in order, each writing one part of a Qwen/Qwen-Image-layout folder in the work directory:
tokenizer (a BPE taught the world's words and the prompt templates), text_encoder (a seeded random
Qwen2.5-VL, frozen), vae (trained on world renders, then its latents measured, or with a latent floor turned
into its principal directions by latent_basis.py), cache (every training caption and image encoded once),
transformer (trained from scratch with flow matching by engine.training), preview (a least-squares latent->RGB
projection). Each stage writes into a temporary folder renamed into place when complete, so with --resume a
finished stage is skipped and an unfinished one continues from its last checkpoint. The finished folder is
then published to --out in one swap.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import torch

from engine.errors import EngineError
from engine.loading import QWEN_PROMPT_DROP, QWEN_PROMPT_TEMPLATE
from engine.presets import Role
from engine.schedulers.flow_match import FlowMatchConfig
from engine.sources import ResolvedComponent
from engine.toyworld.loss_weights import shape_loss_weights
from engine.toyworld.oversampling import oversampled_order
from engine.toyworld.parallel_training import per_process_config, train_in_processes
from engine.toyworld.recipe import VAE_TEST_FIRST_SEED, Recipe
from engine.toyworld.tiny_qwen_image import MODEL_INDEX, train_tokenizer, write_text_encoder
from engine.toyworld.vocabulary import Color, Position, Shape, Size
from engine.toyworld.world import make_sample

logger = logging.getLogger(__name__)

REPORT = "report.json"
CACHE_FILE = "cache.safetensors"
DEFAULT_WORK_DIR = Path(".bench") / "toyworld-train"
PSNR_IMAGES = 64


class BuildError(EngineError):
    """The build cannot start or continue as asked."""


def _dtype(recipe: Recipe) -> torch.dtype:
    return getattr(torch, recipe.weight_dtype)


class _Build:
    """The state one run of the recipe shares between its stages."""

    def __init__(self, recipe: Recipe, work: Path, say: Callable[[str], None]):
        self.recipe, self.work, self.say = recipe, work, say
        self.model = work / "model"
        self.report_path = work / REPORT
        self.report: dict = json.loads(self.report_path.read_text()) if self.report_path.is_file() else {}

    def record(self, **figures) -> None:
        self.report.update(figures)
        self.report_path.write_text(json.dumps(self.report, indent=2) + "\n", encoding="utf-8")

    def component(self, role: Role) -> ResolvedComponent:
        folder = self.model / role.value
        return ResolvedComponent(role, folder, folder)

    def world_text(self) -> str:
        """Training captions and every word of the world, for the tokenizer to learn."""
        count = min(self.recipe.tokenizer_captions, self.recipe.train_images)
        captions = [make_sample(seed, size=self.recipe.image_size).caption for seed in range(count)]
        words = [member.value for kind in (Color, Shape, Size, Position) for member in kind]
        return "\n".join(captions + [" ".join(words + ["background", "picture"])] * 20)

    # The stages. Each writes into the temporary path it is given; build() renames it into place when it returns.

    def tokenizer(self, folder: Path) -> None:
        from transformers import Qwen2Tokenizer

        train_tokenizer(folder, self.world_text(), self.recipe.sizes.vocab_size)
        tokenizer = Qwen2Tokenizer.from_pretrained(str(folder))
        prefix = len(tokenizer(QWEN_PROMPT_TEMPLATE.split("{}")[0]).input_ids)
        if prefix != QWEN_PROMPT_DROP:
            raise BuildError(f"The trained tokenizer makes {prefix} tokens of the template prefix, not "
                             f"{QWEN_PROMPT_DROP}.", "Raise sizes.vocab_size in the recipe.")

    def text_encoder(self, folder: Path) -> None:
        write_text_encoder(folder, self.recipe.sizes, self.model / "tokenizer", self.recipe.seed,
                           shard_size="1MB", dtype=_dtype(self.recipe))

    def vae(self, folder: Path) -> None:
        from engine.toyworld.vae_training import latent_statistics, reconstruction_psnr, train_vae

        config = self.recipe.vae

        def progress(step: int, total: int, mse: float, eta: float) -> None:
            self.say(f"vae: step {step}/{total}  mse {mse:.5f}  eta {_minutes(eta)}")

        vae = train_vae(config, self.work / "vae", progress)
        seeds = [config.first_seed + s for s in range(min(self.recipe.stats_images, config.images))]
        if self.recipe.latent_floor > 0:
            self.fold_latent_basis(vae, seeds)
        else:
            mean, std = latent_statistics(vae, seeds, self.recipe.image_size)
            vae.register_to_config(latents_mean=mean, latents_std=std)
        vae.to(_dtype(self.recipe)).save_pretrained(folder, safe_serialization=True)
        shipped = _load_vae(ResolvedComponent(Role.VAE, folder, folder))
        test_seeds = list(range(VAE_TEST_FIRST_SEED, VAE_TEST_FIRST_SEED + PSNR_IMAGES))
        psnr = reconstruction_psnr(shipped, test_seeds, self.recipe.image_size)
        self.record(vae_psnr_db=round(psnr, 2), vae_psnr_images=PSNR_IMAGES)
        self.say(f"vae: reconstruction PSNR {psnr:.2f} dB on {PSNR_IMAGES} held-out renders (as shipped)")

    def fold_latent_basis(self, vae, seeds: list[int]) -> None:
        from engine.toyworld.latent_basis import fold_latent_basis, measure_latent_basis

        recipe = self.recipe
        basis = measure_latent_basis(vae, seeds, recipe.image_size, recipe.latent_floor, recipe.latent_max_gain)
        fold_latent_basis(vae, basis)
        share = basis.variances / basis.variances.sum()
        self.record(latent_direction_share=[round(v, 4) for v in share.tolist()],
                    latent_direction_gain=[round(v, 3) for v in basis.gains.tolist()])
        self.say("vae: latent turned into its principal directions; variance share "
                 + " ".join(f"{v:.1%}" for v in share[:6].tolist()) + " ..., gains "
                 + " ".join(f"{v:.2f}" for v in basis.gains[:8].tolist()) + " ...")

    def cache(self, path: Path) -> None:
        from engine.loading import load_text_encoder, load_tokenizer
        from engine.training.caching import Encoders, build_cache
        from engine.training.data import ShapesSamples
        from engine.training.single_frame import single_frame_convs

        encoders = Encoders(tokenizer=load_tokenizer(self.component(Role.TOKENIZER)),
                            text_encoder=load_text_encoder(self.component(Role.TEXT_ENCODER), torch.float32,
                                                           torch.device("cpu")),
                            vae=_load_vae(self.component(Role.VAE)))
        samples = ShapesSamples(self.recipe.train_images, first_seed=0, size=self.recipe.image_size)
        last = {"stage": ""}

        def progress(stage: str, done: int, total: int) -> None:
            if stage != last["stage"] or done == total or done % 2048 < 64:
                self.say(f"cache: {stage} {done}/{total}")
                last["stage"] = stage

        with single_frame_convs(encoders.vae):
            cache = build_cache(encoders, samples, key=cache_key(self.recipe), progress=progress)
        cache.save(path)

    def transformer(self, folder: Path) -> None:
        from engine.training.logbook import Logbook
        from engine.training.loop import LOSS_LOG

        if self.recipe.transformer_processes > 1:
            train_in_processes(self.recipe.transformer_processes, train_transformer, (self.recipe, self.work),
                               self.transformer_progress)
        else:
            train_transformer(self.recipe, self.work, self.transformer_progress)
        transformer = new_transformer(self.recipe)
        transformer.load_state_dict(run_weights(self.recipe, self.work, -1))
        transformer.to(_dtype(self.recipe)).save_pretrained(folder, max_shard_size="10MB", safe_serialization=True)
        losses = Logbook(transformer_run_folders(self.recipe, self.work)[-1] / LOSS_LOG).read()
        self.record(transformer_final_loss=losses[-1]["loss"])

    def transformer_progress(self, report) -> None:
        self.say(f"transformer: step {report.step}/{report.total}  loss {report.loss:.4f}  "
                 f"lr {report.learning_rate:.2e}  eta {_minutes(report.eta_s)}")

    def preview(self, path: Path) -> None:
        from engine.toyworld.preview_fit import fit_preview

        from engine.training.single_frame import single_frame_convs

        vae = _load_vae(self.component(Role.VAE))
        seeds = list(range(self.recipe.stats_images))
        with single_frame_convs(vae):
            fit = fit_preview(vae, seeds, self.recipe.image_size)
        path.write_text(json.dumps(fit, indent=1) + "\n", encoding="utf-8")

    def stages(self) -> list[tuple[str, Path, Callable[[Path], None]]]:
        return [
            ("tokenizer", self.model / "tokenizer", self.tokenizer),
            ("text_encoder", self.model / "text_encoder", self.text_encoder),
            ("vae", self.model / "vae", self.vae),
            ("cache", self.work / CACHE_FILE, self.cache),
            ("transformer", self.model / "transformer", self.transformer),
            ("preview", self.model / "preview.json", self.preview),
        ]


def cache_key(recipe: Recipe) -> str:
    """What the cached latents and embeddings depend on: the data and the encoders, not the transformer, so a
    recipe that only changes the transformer trains on the cache an earlier build made."""
    encoder_sizes = {name: value for name, value in asdict(recipe.sizes).items()
                     if not name.startswith(("dit_", "rope_"))}
    key = {"train_images": recipe.train_images, "image_size": recipe.image_size, "sizes": encoder_sizes,
           "vae": asdict(recipe.vae)}
    if recipe.latent_floor > 0:  # only then does the latent basis change the VAE (caches made without it stay good)
        key.update(latent_floor=recipe.latent_floor, latent_max_gain=recipe.latent_max_gain)
    return json.dumps(key, sort_keys=True)


def new_transformer(recipe: Recipe) -> torch.nn.Module:
    """The recipe's transformer at its seeded initial weights."""
    from diffusers import QwenImageTransformer2DModel

    sizes = recipe.sizes
    torch.manual_seed(recipe.seed + 1)
    return QwenImageTransformer2DModel(
        patch_size=2, in_channels=recipe.vae.z_dim * 4, out_channels=recipe.vae.z_dim,
        num_layers=sizes.dit_layers, attention_head_dim=sizes.dit_head_dim, num_attention_heads=sizes.dit_heads,
        joint_attention_dim=sizes.text_hidden, axes_dims_rope=sizes.rope_axes)


def train_transformer(recipe: Recipe, work: Path, progress: Callable | None = None) -> None:
    """The transformer stage's training, from the cache to checkpoints in work/transformer (and for each
    restart, work/transformer-restart-N). It runs in this process, or in each of recipe.transformer_processes
    workers (engine/toyworld/parallel_training.py), which then share every batch of recipe.transformer.batch_size
    between them. A resumed build finds each run's checkpoints: finished runs return at once, the unfinished one
    continues."""
    from engine.training.caching import TrainingCache
    from engine.training.loop import train

    cache = TrainingCache.load(work / CACHE_FILE, cache_key(recipe))
    if cache is None:
        raise BuildError(f"The cache {work / CACHE_FILE} is missing or stale.",
                         "Delete it and run again with --resume.")
    if recipe.shape_loss_emphasis != 1:
        weights = shape_loss_weights(range(len(cache)), recipe.image_size, recipe.shape_loss_emphasis,
                                     recipe.vae.scale)
        cache = replace(cache, loss_weights=weights)
    if recipe.oversample_repeats:
        cache = cache.take(oversampled_order(range(len(cache)), recipe.image_size, recipe.oversampled_shapes,
                                             recipe.oversample_repeats))
    schedule = FlowMatchConfig.from_dict(recipe.scheduler_config())
    runs = recipe.transformer_runs()
    folders = transformer_run_folders(recipe, work)
    done_before = 0
    for index, config in enumerate(runs):
        transformer = new_transformer(recipe)
        if index:  # a restart begins where the last run ended
            transformer.load_state_dict(run_weights(recipe, work, index - 1))
        train(transformer, cache, per_process_config(config, recipe.transformer_processes), schedule,
              folders[index], _across_runs(progress, runs, done_before))
        done_before += config.steps


def transformer_run_folders(recipe: Recipe, work: Path) -> list[Path]:
    """Where each of the transformer's training runs keeps its checkpoints: work/transformer for the first,
    work/transformer-restart-N for restart N."""
    return [work / "transformer"] + [work / f"transformer-restart-{n}"
                                     for n in range(1, len(recipe.transformer_restarts) + 1)]


def run_weights(recipe: Recipe, work: Path, index: int) -> dict[str, torch.Tensor]:
    """The weights transformer run `index` (0 the first, -1 the last) ended with: its EMA copy when it kept one."""
    from engine.training.loop import trained_weights

    return trained_weights(transformer_run_folders(recipe, work)[index],
                           use_ema=recipe.transformer_runs()[index].ema_decay > 0)


def _across_runs(progress: Callable | None, runs: list, done_before: int) -> Callable | None:
    """A run's progress reports restated as steps of all the runs together, the time left included."""
    if progress is None:
        return None
    total = sum(config.steps for config in runs)

    def report(run_progress):
        step = done_before + run_progress.step
        left_in_run = run_progress.total - run_progress.step
        per_step = run_progress.eta_s / left_in_run if left_in_run else 0.0
        progress(replace(run_progress, step=step, total=total, eta_s=per_step * (total - step)))

    return report


def _load_vae(component: ResolvedComponent):
    from diffusers import AutoencoderKLQwenImage

    from engine.loading import load_diffusers_module

    return load_diffusers_module(AutoencoderKLQwenImage, component, torch.float32, torch.device("cpu"))


def _minutes(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):
        return "?"
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def _write_fixed_files(model: Path, recipe: Recipe) -> None:
    model.mkdir(parents=True, exist_ok=True)
    (model / "model_index.json").write_text(json.dumps(MODEL_INDEX, indent=2, sort_keys=True) + "\n")
    (model / "scheduler").mkdir(exist_ok=True)
    (model / "scheduler" / "scheduler_config.json").write_text(
        json.dumps(recipe.scheduler_config(), indent=2, sort_keys=True) + "\n")


def build(recipe: Recipe, out: Path, work: Path = DEFAULT_WORK_DIR, resume: bool = False,
          say: Callable[[str], None] = logger.info) -> dict:
    """Run every stage not yet done, publish the model to `out`, and return the report's figures."""
    work, out = Path(work), Path(out)
    if work.exists() and any(work.iterdir()) and not resume:
        raise BuildError(f"{work} holds an earlier run.",
                         "Continue it with --resume, or delete that folder to start from scratch.")
    work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(recipe.threads)
    run = _Build(recipe, work, say)
    _write_fixed_files(run.model, recipe)
    began = time.monotonic()
    for name, target, stage in run.stages():
        if target.exists():
            say(f"{name}: done already, skipped")
            continue
        say(f"{name}: started")
        started = time.monotonic()
        temporary = target.with_name(target.name + ".tmp")
        if temporary.is_dir():
            shutil.rmtree(temporary)
        elif temporary.exists():
            temporary.unlink()
        stage(temporary)
        temporary.replace(target)
        seconds = time.monotonic() - started
        run.record(**{f"{name}_s": round(seconds + run.report.get(f"{name}_s", 0.0), 1)})
        say(f"{name}: finished in {_minutes(seconds)}")
    run.record(total_s=round(sum(v for k, v in run.report.items() if k.endswith("_s") and k != "total_s"), 1))
    _publish(run.model, out)
    say(f"published to {out} (this run {_minutes(time.monotonic() - began)}, all stages {_minutes(run.report['total_s'])})")
    return run.report


def _publish(model: Path, out: Path) -> None:
    """Replace `out` with a copy of the built model in one rename, so it is never half old, half new."""
    staging = out.with_name(out.name + ".new")
    old = out.with_name(out.name + ".old")
    for leftover in (staging, old):
        if leftover.exists():
            shutil.rmtree(leftover)
    shutil.copytree(model, staging, ignore=shutil.ignore_patterns("*.tmp"))
    if out.exists():
        out.replace(old)
    staging.replace(out)
    shutil.rmtree(old, ignore_errors=True)
