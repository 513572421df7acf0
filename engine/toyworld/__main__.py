"""Command line of the shapes world: `python -m engine.toyworld COMMAND ...`.

Each command is a subparser whose `run` default takes the parsed arguments; a new command (train,
score, ...) adds its own `_add_<command>` function to `_COMMANDS`. Bad input exits 2 with one line
on stderr and no traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

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


_COMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (_add_sample,)


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
    except (ValueError, OSError) as error:
        parser.exit(2, f"{parser.prog} {args.command}: error: {error}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
