"""The star LoRA: teach the shipped tiny-shapes model the held-out star from 24 images, and judge the result.

`python -m engine.toyworld star-lora --out outputs/star` writes <out>/dataset (24 renders of one large star,
each captioned canonically with the trigger word before "star", in a metadata.csv) and <out>/run.toml; then
`python -m engine train --config <out>/run.toml` trains <out>/training/star.safetensors, and
`python -m engine.toyworld star-score --lora <out>/training/star.safetensors` counts in how many of 20 seeds
the detector finds a star with the LoRA at weight 1 and at weight 0 (the base model never saw one).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from engine.toyworld.captions import canonical_caption
from engine.toyworld.dataset import write_images_with_metadata
from engine.toyworld.detector import count_points, detect
from engine.toyworld.loss_weights import LATENT_FACTOR, shape_region
from engine.toyworld.vocabulary import Shape, Size
from engine.toyworld.world import Sample, make_sample
from engine.training.config import TimestepSampling

TRIGGER = "zxq"
IMAGES = 24
IMAGE_SIZE = 128
FIRST_SEED = 3_000_000  # apart from the seeds the base model trained (0..), was scored (1e6..) or measured (2e6..) on
PROMPT = f"a large yellow {TRIGGER} star in the center on a blue background"
SAMPLE_PROMPTS = (PROMPT, f"a large red {TRIGGER} star in the top left on a white background")


@dataclass(frozen=True)
class StarRecipe:
    """The settings of the star run, written into run.toml (the trainer's own defaults fill in the rest).

    On the shipped tiny-shapes (trained at sampling shift 3), 20 seeds of PROMPT: a star with five points in
    95%, 0% at weight 0 (the points are counted since this base: at weight 0 it draws two-lobed blobs the
    detector's class prototypes alone read as stars in 40%).

    Earlier bases, judged without counting points. On a half-trained one (step 5500 of 10000): 400 steps x 4 found a
    star in 50%; 1500 x 8 in 65% (~3.5 min on 2 busy cores); 1500 x 8 at lr 2e-3 in 45%; 3000 x 8 in 35% (the 24
    images memorised, loss 0.01). Weight 0 found one in 10% throughout. On the tiny-shapes trained without shape
    emphasis, 1500 x 8 found one in 35% (its stars had filled-in points); on the one shipped before the shift,
    trained with it, in 80% (6 min on 2 cores), 5% at weight 0; with background_alpha 51 (the star 5x) in 75%, so
    the default weighs every pixel alike. A base trained at lr 1.5e-3 with QWEN_SHIFT noise levels (far better at
    positions) took the star worse: 15% (its stars came out small and blunt), 0% with background_alpha 51; drawing
    the LoRA's noise levels as qwen_shift or logit_normal 20%, 500 steps 0%, rank 4 0%, lr 3e-4 0%; adapters on the
    image stream only (to_q, to_k, to_v, to_out.0, img_mlp.net.2, img_mod.1) 35% (15% at lr 2e-3, 25% at 3000 steps,
    20% with shifted_uniform). That base draws nearly the same picture for every seed (mean pixel difference between
    seeds 10 / 255 against 27 for that earlier shipped one), so each prompt is mostly all or nothing: its yellow
    centre star kept one point and lost the others, while the orange centre star it trained on came out right in
    every seed. Little seed-to-seed difference is not a collapse in itself: renders of one caption differ by 3.8 /
    255 (the offsets within a cell), and the shipped base by 4.1; the 27 was mostly misplaced and extra shapes.
    """

    steps: int = 1500
    batch_size: int = 8
    learning_rate: float = 1e-3
    rank: int = 16
    timestep_sampling: TimestepSampling = TimestepSampling.SHIFTED_UNIFORM
    # When set, the PNGs carry an alpha channel, 255 on and around the star and this elsewhere, and the run
    # weighs its loss by it ([dataset] alpha_mask): the star counts 255 / background_alpha times the background.
    background_alpha: int | None = None
    checkpoint_every: int = 250
    sample_every: int = 250
    sample_steps: int = 20
    seed: int = 0


def star_seeds(count: int = IMAGES, first_seed: int = FIRST_SEED) -> list[int]:
    """The first `count` seeds from first_seed whose star scene holds exactly one large star: one clear
    example per image, large enough that its points survive at 128 pixels."""
    seeds, seed = [], first_seed
    while len(seeds) < count:
        shapes = make_sample(seed, size=IMAGE_SIZE, shapes=(Shape.STAR,)).scene.shapes
        if len(shapes) == 1 and shapes[0].size is Size.LARGE:
            seeds.append(seed)
        seed += 1
    return seeds


def star_caption(caption: str, trigger: str = TRIGGER) -> str:
    return caption.replace(" star", f" {trigger} star")


def write_star_dataset(folder: Path, count: int = IMAGES, background_alpha: int | None = None) -> Path:
    """PNGs and a metadata.csv (image,prompt); returns the metadata file. With background_alpha, each PNG's
    alpha is 255 on the latent positions on and around its star and background_alpha elsewhere."""
    samples = (make_sample(seed, size=IMAGE_SIZE, shapes=(Shape.STAR,)) for seed in star_seeds(count))
    return write_images_with_metadata(
        folder, ((f"star-{index:02d}.png", _with_alpha(sample, background_alpha),
                  star_caption(canonical_caption(sample.scene))) for index, sample in enumerate(samples)))


def _with_alpha(sample: Sample, background_alpha: int | None) -> Image.Image:
    if background_alpha is None:
        return sample.image
    if not 1 <= background_alpha <= 255:
        raise ValueError(f"background_alpha: must be 1 to 255, got {background_alpha}")
    region = shape_region(sample.masks, IMAGE_SIZE).numpy()
    pixels = np.kron(region, np.ones((LATENT_FACTOR, LATENT_FACTOR), dtype=bool))
    alpha = Image.fromarray(np.where(pixels, 255, background_alpha).astype(np.uint8), "L")
    image = sample.image.convert("RGBA")
    image.putalpha(alpha)
    return image


def run_toml(dataset: Path, output: Path, recipe: StarRecipe = StarRecipe(), preset: str = "tiny-shapes") -> str:
    """The run.toml text for the star LoRA on `preset`."""
    def value(item: object) -> str:
        return json.dumps(str(item)) if isinstance(item, Path) else json.dumps(item)

    return "\n".join([
        "# The star LoRA (python -m engine.toyworld star-lora). Train: python -m engine train --config <this file>",
        "[model]", f"preset = {value(preset)}",
        "[dataset]", f"path = {value(dataset)}", f"resolution = {IMAGE_SIZE}",
        f"alpha_mask = {json.dumps(recipe.background_alpha is not None)}",
        "[train]", 'mode = "lora"', f"steps = {recipe.steps}", f"batch_size = {recipe.batch_size}",
        f"learning_rate = {recipe.learning_rate}", f"rank = {recipe.rank}", f"alpha = {recipe.rank}",
        f"timestep_sampling = {value(recipe.timestep_sampling.value)}", f"checkpoint_every = {recipe.checkpoint_every}",
        f"sample_every = {recipe.sample_every}", f"sample_prompts = {value(list(SAMPLE_PROMPTS))}",
        f"sample_steps = {recipe.sample_steps}", f"seed = {recipe.seed}", f"trigger_word = {value(TRIGGER)}",
        "[output]", f"dir = {value(output)}", 'name = "star"', "",
    ])


def write_star_recipe(out: Path, recipe: StarRecipe = StarRecipe(), preset: str = "tiny-shapes") -> Path:
    """<out>/dataset and <out>/run.toml (training output in <out>/training); returns the run.toml."""
    out = Path(out)
    write_star_dataset(out / "dataset", background_alpha=recipe.background_alpha)
    path = out / "run.toml"
    path.write_text(run_toml(out / "dataset", out / "training", recipe, preset), encoding="utf-8")
    return path


@dataclass(frozen=True)
class StarScore:
    with_lora: float  # share of seeds whose image shows a star, LoRA at weight 1
    without_lora: float  # the same at weight 0
    seeds: int
    prompt: str


def has_star(image) -> bool:
    """A shape the detector reads as a star and can count five points on: the base model's two-lobed blobs
    are concave enough to be read as stars, but they stick out two points."""
    return any(shape.shape is Shape.STAR and count_points(shape.mask) == 5 for shape in detect(image).shapes)


def score_star_lora(model, lora: Path, seeds: int = 20, prompt: str = PROMPT,
                    progress: Callable[[int, int], None] | None = None) -> StarScore:
    """Generate `prompt` at the LoRA's 128 pixels for seeds 0..seeds-1 with the LoRA at weight 1 and at weight 0
    (the model's own steps and guidance); count the images in which the detector finds a star."""
    from engine.settings import LoraChoice

    shares = []
    for done, weight in enumerate((1.0, 0.0)):
        found = 0
        for seed in range(seeds):
            result = model.generate(prompt, seed=seed, width=IMAGE_SIZE, height=IMAGE_SIZE,
                                    loras=(LoraChoice(str(lora), weight),))
            found += has_star(result.images[0])
            if progress:
                progress(done * seeds + seed + 1, 2 * seeds)
        shares.append(found / seeds)
    return StarScore(with_lora=shares[0], without_lora=shares[1], seeds=seeds, prompt=prompt)
