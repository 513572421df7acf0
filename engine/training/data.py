"""Training datasets: sequences of (image, caption) examples.

Two sources: shapes-world samples made on the fly from a range of seeds, and a folder with a metadata.csv
(columns image,prompt: DiffSynth-Studio's layout, which `python -m engine.toyworld sample` writes too).
Both are plain sequences, so the caching step reads either the same way.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from engine.errors import EngineError
from engine.toyworld.dataset import METADATA_FILE
from engine.toyworld.vocabulary import BASE_SHAPES, Shape
from engine.toyworld.world import check_shapes, make_sample


class DatasetError(EngineError):
    """A dataset folder is missing, malformed or names images that cannot be read."""


@dataclass(frozen=True)
class Example:
    image: Image.Image  # RGB
    caption: str


class ShapesSamples(Sequence[Example]):
    """Shapes-world samples for seeds first_seed .. first_seed + count - 1, rendered when read."""

    def __init__(self, count: int, first_seed: int = 0, size: int = 128, shapes: Iterable[Shape | str] = BASE_SHAPES):
        if count < 1:
            raise DatasetError(f"A shapes dataset needs at least one sample, got count={count}.")
        self.count, self.first_seed, self.size = count, first_seed, size
        self.shapes = check_shapes(shapes)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.count))]
        if not -self.count <= index < self.count:
            raise IndexError(f"sample {index} is outside 0..{self.count - 1}")
        sample = make_sample(self.first_seed + index % self.count, size=self.size, shapes=self.shapes)
        return Example(sample.image, sample.caption)


class MetadataFolder(Sequence[Example]):
    """A folder of images with a metadata.csv naming each image (relative path) and its prompt."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        path = self.folder / METADATA_FILE
        if not path.is_file():
            raise DatasetError(f"{path} does not exist.",
                               "A dataset folder needs a metadata.csv with the columns image,prompt.")
        with path.open(newline="", encoding="utf-8") as file:
            reader = csv.DictReader(file)
            missing = {"image", "prompt"} - set(reader.fieldnames or ())
            if missing:
                raise DatasetError(f"{path} lacks the column(s) {', '.join(sorted(missing))}.",
                                   "The first line must name the columns, e.g. image,prompt.")
            self.rows = [(row["image"], row["prompt"]) for row in reader]
        if not self.rows:
            raise DatasetError(f"{path} lists no images.")
        absent = [name for name, _ in self.rows if not (self.folder / name).is_file()]
        if absent:
            raise DatasetError(f"{path} names {len(absent)} image(s) that do not exist, e.g. {absent[0]}.")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        name, prompt = self.rows[index]
        try:
            with Image.open(self.folder / name) as image:
                return Example(image.convert("RGB"), prompt)
        except OSError as error:
            raise DatasetError(f"Cannot read {self.folder / name}: {error}.") from None
