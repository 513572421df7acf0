"""Command line of the shapes world: `python -m engine.toyworld COMMAND ...`.

Each command is a subparser whose `run` default takes the parsed arguments; a new command (train,
score, ...) adds its own `_add_<command>` function to `_COMMANDS`. Bad input exits 2 with one line
on stderr and no traceback.
"""

from __future__ import annotations

import os

# Training shares its two cores with whatever else runs. OpenMP threads that spin while they wait for each
# other then stall on every parallel region (measured: 5-25 s per VAE step instead of 0.5 s); threads that
# sleep while waiting degrade gracefully. Must be set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402 (after the environment above)
import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable
from pathlib import Path

from engine.errors import EngineError
from engine.toyworld.dataset import write_dataset
from engine.toyworld.vocabulary import BASE_SHAPES, Shape


def _sample(args: argparse.Namespace) -> None:
    write_dataset(args.out, count=args.count, seed=args.seed, size=args.size, shapes=args.shapes)


def _add_sample(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "sample", help="write N captioned images and a metadata.csv (columns image,prompt) into a folder"
    )
    parser.add_argument("--out", type=Path, required=True, help="folder to write into (created if missing)")
    parser.add_argument("--count", type=int, required=True, help="number of images")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first image; image i uses seed + i")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels")
    parser.add_argument(
        "--shapes",
        nargs="+",
        choices=[s.value for s in Shape],
        default=[s.value for s in BASE_SHAPES],
        help="shapes to draw from; the star is held out of the default",
    )
    parser.set_defaults(run=_sample)


def _train(args: argparse.Namespace) -> None:
    from engine.toyworld.build import build
    from engine.toyworld.recipe import QUICK, SHIPPED

    report = build(QUICK if args.quick else SHIPPED, args.out, args.work, resume=args.resume)
    print(json.dumps(report, indent=2))


def _add_train(commands: argparse._SubParsersAction) -> None:
    from engine.toyworld.build import DEFAULT_WORK_DIR

    parser = commands.add_parser(
        "train", help="make the tiny-shapes model from scratch (tokenizer, text encoder, VAE, transformer, preview)"
    )
    parser.add_argument("--out", type=Path, default=Path("presets") / "tiny-shapes",
                        help="model folder to publish to when every stage is done (default presets/tiny-shapes)")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK_DIR,
                        help=f"checkpoints, caches and logs (default {DEFAULT_WORK_DIR})")
    parser.add_argument("--resume", action="store_true", help="continue the run in --work: skip finished stages")
    parser.add_argument("--quick", action="store_true", help="a seconds-long run of every stage (a smoke test)")
    parser.set_defaults(run=_train)


def shapes_preset(preset_or_folder: str):
    """The preset a shapes-world command runs: a preset by name, or for a folder (a candidate build, such as
    `train --out DIR` writes) the tiny-shapes preset with the folder's files. A folder's own preset would
    sample at Qwen-Image's 1328x1328 and 50 steps, not at the 128x128 and 20 steps the targets are stated at."""
    from dataclasses import replace

    from engine.presets import DEFAULT_PRESET, load_preset

    folder = Path(preset_or_folder)
    if folder.is_dir():
        return replace(load_preset(DEFAULT_PRESET), folder=folder.resolve())
    return load_preset(preset_or_folder)


def _shapes_model(preset_or_folder: str):
    import engine

    return engine.load(shapes_preset(preset_or_folder), device="cpu")


def _score(args: argparse.Namespace) -> None:
    from engine.toyworld.score import score_model

    model = _shapes_model(args.model)

    def progress(stage: str, done: int, total: int) -> None:
        if done == total or done % 10 == 0:
            logging.getLogger(__name__).info("%s %d/%d", stage, done, total)

    report = score_model(model, prompts=args.prompts, seeds=args.seeds, img2img=args.img2img, progress=progress)
    print(f"{model.preset.name}: {args.prompts} held-out prompts x {args.seeds} seeds, "
          f"{model.preset.defaults.steps} steps, cfg {model.preset.defaults.cfg:g}")
    print(report.table())
    print()
    print(report.breakdown_table())


def _add_score(commands: argparse._SubParsersAction) -> None:
    from engine.presets import DEFAULT_PRESET

    parser = commands.add_parser("score", help="judge a shapes-world model's pictures on held-out prompts")
    parser.add_argument("--model", default=DEFAULT_PRESET,
                        help=f"preset name, or a model folder scored at {DEFAULT_PRESET}'s settings "
                             f"(default {DEFAULT_PRESET})")
    parser.add_argument("--prompts", type=int, default=60, help="held-out prompts (default 60)")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per prompt (default 2)")
    parser.add_argument("--img2img", type=int, help="held-out renders redrawn at strength 0.3 (default: --prompts)")
    parser.set_defaults(run=_score)


def _star_lora(args: argparse.Namespace) -> None:
    from engine.toyworld.star_lora import StarRecipe, write_star_recipe
    from engine.training.config import TimestepSampling

    background = None if args.background_alpha == 0 else args.background_alpha
    recipe = StarRecipe(steps=args.steps, background_alpha=background,
                        timestep_sampling=TimestepSampling(args.timestep_sampling))
    path = write_star_recipe(args.out, recipe, preset=args.preset)
    print(f"wrote {args.out / 'dataset'} and {path}; train with: python -m engine train --config {path}")


def _add_star_lora(commands: argparse._SubParsersAction) -> None:
    from engine.toyworld.star_lora import StarRecipe
    from engine.training.config import TimestepSampling

    parser = commands.add_parser(
        "star-lora", help="write the star LoRA's 24 images (captions with the trigger word) and its run.toml")
    parser.add_argument("--out", type=Path, default=Path("outputs") / "star",
                        help="folder for dataset/, run.toml and the training output (default outputs/star)")
    parser.add_argument("--preset", default="tiny-shapes", help="the base model (default tiny-shapes)")
    parser.add_argument("--steps", type=int, default=StarRecipe.steps,
                        help=f"training steps (default {StarRecipe.steps})")
    parser.add_argument("--background-alpha", type=int, default=StarRecipe.background_alpha or 0,
                        help="1-255: weigh the loss by an alpha channel that is 255 around the star and this "
                             f"elsewhere; 0 weighs every pixel alike (default {StarRecipe.background_alpha or 0})")
    parser.add_argument("--timestep-sampling", choices=[choice.value for choice in TimestepSampling],
                        default=StarRecipe.timestep_sampling.value,
                        help=f"how the noise levels are drawn (default {StarRecipe.timestep_sampling.value})")
    parser.set_defaults(run=_star_lora)


def _star_score(args: argparse.Namespace) -> None:
    from engine.toyworld.star_lora import score_star_lora

    model = _shapes_model(args.model)
    score = score_star_lora(model, args.lora, seeds=args.seeds)
    print(f"{score.prompt!r}, {score.seeds} seeds: a star in {score.with_lora:.0%} with the LoRA, "
          f"{score.without_lora:.0%} at weight 0")


def _add_star_score(commands: argparse._SubParsersAction) -> None:
    from engine.presets import DEFAULT_PRESET

    parser = commands.add_parser("star-score", help="how often the detector finds a star with the LoRA and without")
    parser.add_argument("--lora", type=Path, required=True, help="the trained star LoRA (.safetensors)")
    parser.add_argument("--model", default=DEFAULT_PRESET,
                        help=f"preset name, or a model folder run at {DEFAULT_PRESET}'s settings "
                             f"(default {DEFAULT_PRESET})")
    parser.add_argument("--seeds", type=int, default=20, help="seeds 0..N-1 (default 20)")
    parser.set_defaults(run=_star_score)


_COMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (_add_sample, _add_train, _add_score,
                                                                        _add_star_lora, _add_star_score)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine.toyworld", description="The procedural shapes world.")
    commands = parser.add_subparsers(dest="command", required=True)
    for add in _COMMANDS:
        add(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except (ValueError, OSError, EngineError) as error:
        parser.exit(2, f"{parser.prog} {args.command}: error: {error}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
