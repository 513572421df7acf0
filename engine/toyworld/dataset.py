"""Write shapes-world samples to disk as a training dataset in DiffSynth-Studio's image layout:
one PNG per sample and a metadata.csv with the columns image (file name) and prompt."""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterable
from pathlib import Path

from PIL import Image

from engine.toyworld.scene import MIN_IMAGE_SIZE
from engine.toyworld.vocabulary import BASE_SHAPES, Shape
from engine.toyworld.world import check_shapes, make_sample

logger = logging.getLogger(__name__)

METADATA_FILE = "metadata.csv"


def write_dataset(
    out_dir: Path, count: int, seed: int = 0, size: int = 128, shapes: Iterable[Shape | str] = BASE_SHAPES
) -> Path:
    """Write samples seed, seed+1, ... seed+count-1 into `out_dir`; returns the metadata file's path."""
    # Checked before anything is written, so bad input leaves no half-written dataset behind.
    if count < 1:
        raise ValueError(f"count: write at least one sample, got {count}")
    if size < MIN_IMAGE_SIZE:
        raise ValueError(f"size: images are at least {MIN_IMAGE_SIZE} pixels wide, got {size}")
    shapes = check_shapes(shapes)
    samples = (make_sample(seed + index, size=size, shapes=shapes) for index in range(count))
    metadata = write_images_with_metadata(
        out_dir, ((f"{index:06d}.png", sample.image, sample.caption) for index, sample in enumerate(samples)))
    logger.info("wrote %d samples and %s to %s", count, METADATA_FILE, out_dir)
    return metadata


def write_images_with_metadata(out_dir: Path, rows: Iterable[tuple[str, Image.Image, str]]) -> Path:
    """Save each (file name, image, prompt) as a PNG in out_dir and list it in metadata.csv; returns that file."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metadata = out_dir / METADATA_FILE
    with metadata.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["image", "prompt"])
        for name, image, prompt in rows:
            image.save(out_dir / name)
            writer.writerow([name, prompt])
    return metadata
