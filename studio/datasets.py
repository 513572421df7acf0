"""Training datasets in the studio: a zip unpacked into the training folder, or a folder already there, read
as (image, caption) rows for the caption table, and the edited table written back as metadata.csv.

Files are only read and written under the configured training folder: a zip is unpacked there, and a folder
named by the user must lie inside it. The folder written is one the engine reads as is: images at its top
level and a metadata.csv (image,prompt; DiffSynth-Studio's layout), which wins over any .txt captions.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from PIL import Image, UnidentifiedImageError

from engine.toyworld.dataset import METADATA_FILE
from engine.training.data import CAPTION_SUFFIX, IMAGE_SUFFIXES, REPEAT_FOLDER, DatasetError, has_alpha

logger = logging.getLogger(__name__)

DATASETS_SUBDIR = "datasets"  # under the training folder: where uploaded zips are unpacked
MAX_ZIP_FILES = 20_000
MAX_IMAGE_BYTES = 100 * 2**20  # one image; a 100 MB image is a mistake, not training data
MAX_UNPACKED_BYTES = 8 * 2**30  # the whole dataset, as the zip declares it, checked before anything is written
_LISTED = 5  # names quoted in a note before "and N more"
_IGNORED = ("__MACOSX/",)  # what archivers add beside the files: left out without a word


@dataclass(frozen=True)
class CaptionRow:
    image: str  # path relative to the dataset folder, as metadata.csv names it
    caption: str


@dataclass(frozen=True)
class Dataset:
    folder: Path
    rows: tuple[CaptionRow, ...]
    notes: tuple[str, ...] = ()  # what an import left out, for the user


def datasets_root(training_dir: Path) -> Path:
    return Path(training_dir) / DATASETS_SUBDIR


def import_zip(archive: Path, training_dir: Path) -> Dataset:
    """Unpack a zip of images (with .txt captions or a metadata.csv) into a new folder under the training folder.

    Nothing is written unless the whole zip is acceptable: member paths must stay inside the folder, and the
    sizes it declares must be within the limits. Non-images and unreadable images are left out and named.
    """
    archive = Path(archive)
    try:
        with zipfile.ZipFile(archive) as bundle:
            return _unpack(bundle, archive, training_dir)
    except zipfile.BadZipFile as error:
        raise DatasetError(f"{archive.name} is not a readable zip file ({error}).",
                           "Upload a .zip of images, made with any archiver.") from None


def _unpack(bundle: zipfile.ZipFile, archive: Path, training_dir: Path) -> Dataset:
    members = [info for info in bundle.infolist() if not info.is_dir()]
    if len(members) > MAX_ZIP_FILES:
        raise DatasetError(f"{archive.name} holds {len(members)} files; a dataset may hold at most {MAX_ZIP_FILES}.",
                           "Split it into smaller datasets.")
    for info in members:
        _check_member_path(info.filename)
    declared = sum(info.file_size for info in members)
    if declared > MAX_UNPACKED_BYTES:
        raise DatasetError(f"{archive.name} unpacks to {declared / 2**30:.1f} GB; a dataset may take at most "
                           f"{MAX_UNPACKED_BYTES / 2**30:.0f} GB.", "Resize the images or split the dataset.")
    kept = [info for info in members if not _ignored(info.filename)]
    top = _common_top_folder([PurePosixPath(info.filename) for info in kept])

    images: dict[PurePosixPath, zipfile.ZipInfo] = {}
    captions: dict[PurePosixPath, zipfile.ZipInfo] = {}
    metadata: zipfile.ZipInfo | None = None
    skipped: list[str] = []
    for info in kept:
        path = PurePosixPath(info.filename)
        inner = path.relative_to(top) if top else path
        suffix = inner.suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            images[inner] = info
        elif suffix == CAPTION_SUFFIX:
            captions[inner.with_suffix("")] = info
        elif inner == PurePosixPath(METADATA_FILE):
            metadata = info
        else:
            skipped.append(info.filename)
    if not images:
        raise DatasetError(f"{archive.name} holds no images.",
                           f"Put images ({', '.join(IMAGE_SUFFIXES)}) in the zip, each with a same-named "
                           f"{CAPTION_SUFFIX} caption or listed in a {METADATA_FILE}.")
    listed = _read_metadata(bundle.read(metadata).decode("utf-8-sig")) if metadata is not None else {}

    datasets = datasets_root(training_dir)
    datasets.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".unpacking-", dir=datasets))
    try:
        rows, unreadable, repeated = [], [], set()
        for inner, info in sorted(images.items()):
            name = "_".join(inner.parts)  # the engine reads a flat folder: sub/a.png becomes sub_a.png
            target = staging / name
            problem = _extract_image(bundle, info, target)
            if problem:
                unreadable.append(f"{info.filename} ({problem})")
                continue
            caption = listed.get(inner.as_posix())
            if caption is None and inner.with_suffix("") in captions:
                caption = bundle.read(captions[inner.with_suffix("")]).decode("utf-8-sig", errors="replace")
            parent = PurePosixPath(info.filename).parent.name
            repeat_folder = REPEAT_FOLDER.fullmatch(parent)
            if repeat_folder:  # kohya's <repeats>_<name>: its name captions the images that have no .txt
                caption = caption if caption is not None else repeat_folder.group(2)
                if int(repeat_folder.group(1)) != 1:
                    repeated.add(parent)
            rows.append(CaptionRow(name, " ".join((caption or "").split())))
        if not rows:
            raise DatasetError(f"None of the {len(images)} image(s) in {archive.name} can be read: "
                               f"{_some(unreadable)}.", "Check that the files are images and not damaged.")
        _write_metadata(staging, rows, {})
        folder = _free_name(datasets, _folder_name(archive.stem))
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    notes = []
    if skipped:
        notes.append(f"Skipped {len(skipped)} file(s) that are not images: {_some(skipped)}.")
    if unreadable:
        notes.append(f"Left out {len(unreadable)} image(s) that cannot be read: {_some(unreadable)}.")
    if repeated:
        notes.append(f"The repeat counts of the kohya folder(s) {_some(sorted(repeated))} are not used here: "
                     "each image counts once. To train with them, give the folder to python -m engine train.")
    logger.info("Unpacked %s into %s: %d images", archive.name, folder, len(rows))
    return Dataset(folder, tuple(rows), tuple(notes))


def _check_member_path(name: str) -> None:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or re.match(r"^[A-Za-z]:", name):
        raise DatasetError(f"The zip holds a file whose path leaves the dataset folder: {name}. Nothing was unpacked.",
                           "Make the zip again from the dataset folder itself, so every path is inside it.")


def _ignored(name: str) -> bool:
    return name.startswith(_IGNORED) or PurePosixPath(name).name.startswith(".")


def _common_top_folder(paths: list[PurePosixPath]) -> PurePosixPath | None:
    """The one folder every file sits in (zips made by compressing a folder), so it is not kept as a prefix."""
    tops = {path.parts[0] for path in paths if len(path.parts) > 1}
    if len(tops) == 1 and all(len(path.parts) > 1 for path in paths):
        return PurePosixPath(tops.pop())
    return None


def _extract_image(bundle: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path) -> str:
    """Write one image member to target; the reason when it is not a usable image (then nothing is left)."""
    if info.file_size > MAX_IMAGE_BYTES:
        return f"{info.file_size / 2**20:.0f} MB, more than {MAX_IMAGE_BYTES // 2**20} MB"
    data = bundle.read(info)  # zipfile stops at the declared size and checks the CRC
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as error:
        return str(error) or type(error).__name__
    target.write_bytes(data)
    return ""


def _folder_name(stem: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.")
    return name or "dataset"


def _free_name(parent: Path, name: str) -> Path:
    candidate, number = parent / name, 2
    while candidate.exists():
        candidate, number = parent / f"{name}-{number}", number + 1
    return candidate


def dataset_folder(text: str, training_dir: Path) -> Path:
    """The folder the user named (absolute, or relative to the training folder), refused when outside it."""
    if not text or not text.strip():
        raise DatasetError("No dataset folder is given.",
                           f"Give a folder under {training_dir}, or upload the dataset as a zip.")
    root = Path(training_dir).resolve()
    path = Path(text.strip()).expanduser()
    folder = (path if path.is_absolute() else root / path).resolve()  # symlinks followed: the target is checked
    if not folder.is_relative_to(root):
        raise DatasetError(f"The folder {path} is outside the studio's training folder {root}.",
                           f"Copy the dataset into {datasets_root(root)} and give its path, or upload it as a zip.")
    if not folder.is_dir():
        raise DatasetError(f"There is no folder {folder}.",
                           f"Give a folder under {root}, or upload the dataset as a zip.")
    return folder


def read_dataset(folder: Path) -> Dataset:
    """The folder's images with their captions: from metadata.csv, else each image's .txt, else empty."""
    folder = Path(folder)
    listed = _read_metadata_file(folder)
    rows = [CaptionRow(name, caption) for name, caption in listed.items() if (folder / name).is_file()]
    named = set(listed)
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and path.name not in named:
            text_file = path.with_suffix(CAPTION_SUFFIX)
            caption = text_file.read_text(encoding="utf-8-sig", errors="replace") if text_file.is_file() else ""
            rows.append(CaptionRow(path.name, " ".join(caption.split())))
    if not rows:
        raise DatasetError(f"{folder} holds no images.",
                           f"Put images ({', '.join(IMAGE_SUFFIXES)}) there, or upload the dataset as a zip.")
    return Dataset(folder, tuple(rows))


def images_with_alpha(dataset: Dataset) -> int:
    """How many of the dataset's images carry transparency, read from their headers (an unreadable file counts
    as none: the trainer names it when it gets there)."""
    count = 0
    for row in dataset.rows:
        try:
            with Image.open(dataset.folder / row.image) as image:
                count += has_alpha(image)
        except (UnidentifiedImageError, OSError, ValueError):
            pass
    return count


def caption_rows(folder: Path, table: list[list[str]], trigger_word: str = "") -> tuple[CaptionRow, ...]:
    """The caption table, checked against the folder. Captions are kept as written: the trainer puts the
    trigger word in front of each one that lacks it, so an empty caption is fine when there is a trigger word."""
    folder = Path(folder)
    known = {row.image for row in read_dataset(folder).rows}
    rows, unknown, empty = [], [], []
    for values in table:
        image, caption = str(values[0]).strip(), " ".join(str(values[1] if len(values) > 1 else "").split())
        if image not in known:
            unknown.append(image)
            continue
        if not caption:
            empty.append(image)
        rows.append(CaptionRow(image, caption))
    if unknown:
        raise DatasetError(f"The caption table names images that are not in {folder}: {_some(unknown)}.",
                           "Only the captions can be edited; load the dataset again to reset the names.")
    if empty and not trigger_word.strip():
        raise DatasetError(f"{len(empty)} image(s) have no caption: {_some(empty)}.",
                           "Write a caption for each in the table, or set a trigger word.")
    if not rows:
        raise DatasetError("The caption table is empty.", "Load a dataset first.")
    return tuple(rows)


def save_captions(folder: Path, rows: tuple[CaptionRow, ...]) -> None:
    """Write the rows to the folder's metadata.csv, keeping its other columns (edit images, masks...)."""
    _write_metadata(Path(folder), list(rows), _read_metadata_extras(Path(folder)))


def _read_metadata(text: str) -> dict[str, str]:
    reader = csv.DictReader(io.StringIO(text))
    if not {"image", "prompt"} <= set(reader.fieldnames or ()):
        raise DatasetError(f"The {METADATA_FILE} lacks the columns image and prompt.",
                           "Its first line must name the columns, e.g. image,prompt.")
    return {row["image"]: " ".join((row["prompt"] or "").split()) for row in reader if row.get("image")}


def _read_metadata_file(folder: Path) -> dict[str, str]:
    path = folder / METADATA_FILE
    return _read_metadata(path.read_text(encoding="utf-8-sig")) if path.is_file() else {}


def _read_metadata_extras(folder: Path) -> dict[str, dict[str, str]]:
    """The columns other than image and prompt, per image (edit images, masks...): kept when captions change."""
    path = folder / METADATA_FILE
    if not path.is_file():
        return {}
    with path.open(newline="", encoding="utf-8-sig") as file:
        return {row["image"]: {key: value for key, value in row.items() if key not in ("image", "prompt") and key}
                for row in csv.DictReader(file) if row.get("image")}


def _write_metadata(folder: Path, rows: list[CaptionRow], extra: dict[str, dict[str, str]]) -> None:
    columns = ["image", "prompt"] + sorted({key for values in extra.values() for key in values})
    partial = folder / f".{METADATA_FILE}.partial"
    with partial.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({**extra.get(row.image, {}), "image": row.image, "prompt": row.caption})
    os.replace(partial, folder / METADATA_FILE)  # the trainer never reads a half-written table


def _some(names: list[str]) -> str:
    shown = ", ".join(names[:_LISTED])
    return shown + (f" and {len(names) - _LISTED} more" if len(names) > _LISTED else "")
