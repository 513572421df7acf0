"""Training datasets: sequences of (image, caption) examples.

Three sources: shapes-world samples made on the fly from a range of seeds, a folder with a metadata.csv
(columns image,prompt plus any others: DiffSynth-Studio's layout, which `python -m engine.toyworld sample`
writes too), and a kohya-style folder of images each beside a same-named .txt caption (flat, or in kohya's
<repeats>_<name> subfolders). All are plain sequences that also tell each image's size without decoding it
(for bucketing), so the caching step reads any of them the same way.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from engine.errors import EngineError
from engine.toyworld.dataset import METADATA_FILE
from engine.toyworld.vocabulary import BASE_SHAPES, Shape
from engine.toyworld.world import check_shapes, make_sample


class DatasetError(EngineError):
    """A dataset folder is missing, malformed or names images that cannot be read."""


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CAPTION_SUFFIX = ".txt"
REPEAT_FOLDER = re.compile(r"(\d+)_(.+)")  # kohya's <repeats>_<name> training folders
_LISTED = 3  # file names quoted in an error before "and N more"


@dataclass(frozen=True)
class Example:
    image: Image.Image  # RGB
    caption: str
    # "L", the image's size: how much each pixel counts in the loss (255 fully, 0 not at all), or None for all
    # fully; from the image's alpha channel when the dataset is opened with alpha_mask (kohya's masked loss).
    loss_mask: Image.Image | None = None


class ShapesSamples(Sequence[Example]):
    """Shapes-world samples for seeds first_seed .. first_seed + count - 1, rendered when read."""

    def __init__(self, count: int, first_seed: int = 0, size: int = 128, shapes: Iterable[Shape | str] = BASE_SHAPES):
        if count < 1:
            raise DatasetError(f"A shapes dataset needs at least one sample, got count={count}.")
        self.count, self.first_seed, self.size = count, first_seed, size
        self.shapes = check_shapes(shapes)

    def __len__(self) -> int:
        return self.count

    def image_size(self, index: int) -> tuple[int, int]:
        return self.size, self.size

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.count))]
        if not -self.count <= index < self.count:
            raise IndexError(f"sample {index} is outside 0..{self.count - 1}")
        sample = make_sample(self.first_seed + index % self.count, size=self.size, shapes=self.shapes)
        return Example(sample.image, sample.caption)


class _ListedImages(Sequence[Example]):
    """Images in a folder listed as rows of (path relative to the folder, caption), read when indexed.

    With alpha_mask, each example's loss mask is its image's alpha channel (all 255 for an image without one).
    """

    folder: Path
    rows: list[tuple[str, str]]
    alpha_mask: bool = False

    def __len__(self) -> int:
        return len(self.rows)

    def image_size(self, index: int) -> tuple[int, int]:
        return image_size(self.folder / self.rows[index][0])

    def image_key(self, index: int) -> tuple[str, str]:
        """Equal for examples that are the same file with the same caption (a repeat folder's copies), so the
        cache encodes them once."""
        return self.rows[index]

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        name, caption = self.rows[index]
        if not self.alpha_mask:
            return Example(read_image(self.folder / name), caption)
        image, alpha = read_image_and_alpha(self.folder / name)
        if alpha.getextrema()[1] == 0:
            raise DatasetError(f"The image {self.folder / name} is transparent everywhere, so with alpha_mask it "
                               "would teach nothing.", "Give it an alpha channel that marks what to learn, or "
                               "remove it.")
        return Example(image, caption, alpha)


class MetadataFolder(_ListedImages):
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


class CaptionedFolder(_ListedImages):
    """A kohya-style folder: images (png, jpg, webp, bmp) each with a same-named .txt caption beside it.

    Or kohya's training-folder layout: no images at the top, but subfolders named <repeats>_<name> (e.g.
    "10_zxq star"), whose images are each listed <repeats> times, so a small set can weigh as much as a large
    one in the same run. There, as in kohya's sd-scripts, an image without a .txt is captioned <name>.
    """

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise DatasetError(f"The dataset folder {self.folder} does not exist.")
        repeat_folders = sorted(path for path in self.folder.iterdir()
                                if path.is_dir() and REPEAT_FOLDER.fullmatch(path.name))
        if not _images_in(self.folder) and repeat_folders:
            self.rows = [row for sub in repeat_folders for row in _repeated_rows(sub)]
            if not self.rows:
                raise DatasetError(f"The repeat folders of {self.folder} ({_some([p.name for p in repeat_folders])}) "
                                   "hold no images.")
            return
        images = _images_in(self.folder)
        if not images:
            raise DatasetError(f"{self.folder} holds no images and no {METADATA_FILE}.",
                               f"Put images ({', '.join(IMAGE_SUFFIXES)}) with same-named {CAPTION_SUFFIX} captions "
                               f"there, or a {METADATA_FILE} with the columns image,prompt.")
        uncaptioned = [path.name for path in images if not path.with_suffix(CAPTION_SUFFIX).is_file()]
        if uncaptioned:
            raise DatasetError(f"{len(uncaptioned)} image(s) in {self.folder} have no caption file: "
                               f"{_some(uncaptioned)}.",
                               f"Write each caption into a {CAPTION_SUFFIX} file with the image's name "
                               f"(e.g. {Path(uncaptioned[0]).stem}{CAPTION_SUFFIX}).")
        self.rows = [(path.name, _caption_of(path)) for path in images]
        empty = [name for name, caption in self.rows if not caption]
        if empty:
            raise DatasetError(f"{len(empty)} caption file(s) in {self.folder} are empty: {_some(empty)}.",
                               "Describe each image in its caption file.")


def _images_in(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir() if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES)


def _caption_of(image: Path) -> str:
    return image.with_suffix(CAPTION_SUFFIX).read_text(encoding="utf-8").strip()


def _repeated_rows(folder: Path) -> list[tuple[str, str]]:
    """Rows of one <repeats>_<name> folder: each image <repeats> times, captioned by its .txt or else <name>."""
    repeats_text, name = REPEAT_FOLDER.fullmatch(folder.name).groups()
    repeats = int(repeats_text)
    if repeats < 1:
        raise DatasetError(f"The folder {folder.name} asks for {repeats} repeats.",
                           "Name it with 1 or more repeats, e.g. 1_" + name + ".")
    rows = []
    for image in _images_in(folder):
        caption = _caption_of(image) if image.with_suffix(CAPTION_SUFFIX).is_file() else name.strip()
        rows += [(f"{folder.name}/{image.name}", caption)] * repeats
    return rows


def open_dataset(folder: Path, alpha_mask: bool = False) -> MetadataFolder | CaptionedFolder:
    """The dataset in a folder: its metadata.csv when it has one, else its images with .txt captions.

    alpha_mask: each example carries its image's alpha channel as its loss mask.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"The dataset folder {folder} does not exist.")
    dataset = MetadataFolder(folder) if (folder / METADATA_FILE).is_file() else CaptionedFolder(folder)
    dataset.alpha_mask = alpha_mask
    return dataset


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) after EXIF rotation, read from the file's header; DatasetError naming an unreadable file."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(0x0112, 1)  # EXIF orientation: 5-8 swap the sides
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise DatasetError(f"Cannot read the image {path}: {error}.", "Replace or remove that file.") from None
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def read_image(path: Path) -> Image.Image:
    """The image as RGB, EXIF rotation applied; DatasetError naming the file when it cannot be decoded."""
    return _upright(path).convert("RGB")


def read_image_and_alpha(path: Path) -> tuple[Image.Image, Image.Image]:
    """The image as RGB and its alpha channel as "L" (all 255 when it has none), EXIF rotation applied."""
    image = _upright(path)
    alpha = image.convert("RGBA").getchannel("A") if has_alpha(image) else Image.new("L", image.size, 255)
    return image.convert("RGB"), alpha


def has_alpha(image: Image.Image) -> bool:
    """Whether the image carries transparency (an alpha channel or a transparent palette color); the header
    tells, so an image opened but not decoded will do."""
    return image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info


def _upright(path: Path) -> Image.Image:
    """The decoded image with its EXIF rotation applied; DatasetError naming the file when it cannot be decoded."""
    try:
        with Image.open(path) as image:
            image.load()
            return ImageOps.exif_transpose(image)
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise DatasetError(f"Cannot read the image {path}: {error}.", "Replace or remove that file.") from None


def fit_to_size(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scale (Lanczos) until the image covers width x height, then crop the centre: no stretching, no borders."""
    if image.size == (width, height):
        return image
    scale = max(width / image.width, height / image.height)
    scaled = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    resized = image.resize(scaled, Image.Resampling.LANCZOS)
    left, top = (scaled[0] - width) // 2, (scaled[1] - height) // 2
    return resized.crop((left, top, left + width, top + height))


def _some(names: list[str]) -> str:
    shown = ", ".join(names[:_LISTED])
    return shown + (f" and {len(names) - _LISTED} more" if len(names) > _LISTED else "")
