"""Sources: where a preset's component files are on disk, whether they are complete, and fetching them.

A component's files live in one of two places:
- a folder the preset names (the shipped tiny models, or a user's `--model` folder), at folder/<subfolder>/;
- the models folder, laid out as the hub repos: models/<repo id>/<subfolder>/<file>, so that a hub snapshot,
  a manual copy and a download by this module all land in the same place.
A component whose spec names a repo is looked for in the models folder; one without a repo in the preset's folder.
Files that are missing come from ModelScope (the default hub) or Hugging Face, one snapshot per repo.
"""

from __future__ import annotations

import json
import logging
import re
import shlex
import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from engine.errors import MissingFilesError, PresetError
from engine.presets import ComponentSpec, Family, Preset, Role

logger = logging.getLogger(__name__)

DEFAULT_MODELS_DIR = Path("models")

Progress = Callable[[int, int, str], None]


class Hub(str, Enum):
    MODELSCOPE = "modelscope"
    HUGGINGFACE = "huggingface"


HUB_TITLES: dict[Hub, str] = {Hub.MODELSCOPE: "ModelScope", Hub.HUGGINGFACE: "Hugging Face"}


@dataclass(frozen=True)
class ResolvedComponent:
    role: Role
    folder: Path  # folder holding the component's weights and files
    config_folder: Path  # folder holding its config (== folder unless the preset borrows a config)


@dataclass(frozen=True)
class ComponentStatus:
    role: Role
    expected_at: Path  # where the files are looked for
    present: bool
    missing: tuple[str, ...]  # paths or globs under the component's repo (or folder); "(from X)" if under another
    size_bytes: int  # bytes on disk of what is present


@dataclass(frozen=True)
class _Needs:
    """What must be on disk for a role to load."""

    configs: tuple[str, ...]  # all of these, in the config folder
    one_of: tuple[tuple[str, ...], ...] = ()  # one of these groups in full, in the folder
    weights: str = ""  # glob of the safetensors weights ("" = the role has no weights)
    index: str = ""  # the shard index that names the weight files when they are sharded


NEEDS: dict[Role, _Needs] = {
    Role.TRANSFORMER: _Needs(("config.json",), weights="diffusion_pytorch_model*.safetensors",
                             index="diffusion_pytorch_model.safetensors.index.json"),
    Role.VAE: _Needs(("config.json",), weights="diffusion_pytorch_model*.safetensors",
                     index="diffusion_pytorch_model.safetensors.index.json"),
    Role.TEXT_ENCODER: _Needs(("config.json",), weights="model*.safetensors", index="model.safetensors.index.json"),
    # A fast tokenizer (tokenizer.json) or the slow one's BPE files; transformers builds either.
    Role.TOKENIZER: _Needs(("tokenizer_config.json",), one_of=(("tokenizer.json",), ("vocab.json", "merges.txt"))),
    Role.SCHEDULER: _Needs(("scheduler_config.json",)),
}

# Sizes of the official bf16 checkpoints, only to tell the user how much a download will fetch.
TYPICAL_BYTES: dict[tuple[Family, Role], int] = {
    (Family.QWEN_IMAGE, Role.TRANSFORMER): 40_900_000_000,
    (Family.QWEN_IMAGE, Role.TEXT_ENCODER): 16_600_000_000,
    (Family.QWEN_IMAGE, Role.VAE): 254_000_000,
    (Family.QWEN_IMAGE, Role.TOKENIZER): 11_000_000,
    (Family.QWEN_IMAGE, Role.SCHEDULER): 1_000,
}

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# Shards need their index to load: "diffusion_pytorch_model-00001-of-00009.safetensors".
_SHARD_NAME = re.compile(r"-\d+-of-\d+\.safetensors$")
_LISTED = 6  # missing files named in a message; the rest are counted


@dataclass(frozen=True)
class _Layout:
    """Where one component's files are looked for."""

    spec: ComponentSpec
    root: Path  # models/<repo>, or the preset's folder
    folder: Path
    config_root: Path
    config_folder: Path

    @property
    def borrows_config(self) -> bool:
        return bool(self.spec.config_repo or self.spec.config_subfolder)


@dataclass(frozen=True)
class _Missing:
    root: Path  # the repo folder (or preset folder) the file belongs in
    relative: str  # path or glob under root
    note: str = ""
    borrowed: bool = False  # the config the spec borrows (config_repo/config_subfolder), not one of its own files

    @property
    def label(self) -> str:
        return f"{self.relative} ({self.note})" if self.note else self.relative


def _layout(preset: Preset, spec: ComponentSpec, models_dir: Path) -> _Layout:
    if spec.repo:
        root = models_dir / spec.repo
    elif preset.folder is not None:
        root = preset.folder
    else:
        raise PresetError(f"Preset '{preset.name}': the {spec.role.value} component names no repo and the preset "
                          "no folder.", "Give the component a repo or the preset a folder.")
    folder = root / spec.subfolder
    if not (spec.config_repo or spec.config_subfolder):
        return _Layout(spec, root, folder, root, folder)
    config_root = models_dir / spec.config_repo if spec.config_repo else root
    return _Layout(spec, root, folder, config_root, config_root / spec.config_subfolder)


def _shard_names(index: Path) -> list[str] | None:
    """The files an index's weight_map names, or None when the index cannot be read."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        return None
    if not isinstance(weight_map, dict) or not all(isinstance(name, str) for name in weight_map.values()):
        return None
    return sorted(set(weight_map.values()))


def _missing_weights(layout: _Layout, needs: _Needs) -> list[_Missing]:
    folder, root = layout.folder, layout.root
    index = folder / needs.index
    if index.is_file():
        shards = _shard_names(index)
        if shards is None:
            return [_Missing(root, _relative(root, index), "unreadable, download it again")]
        return [_Missing(root, _relative(root, folder / name)) for name in shards if not (folder / name).is_file()]
    found = sorted(folder.glob(needs.weights))
    if any(_SHARD_NAME.search(path.name) for path in found):
        return [_Missing(root, _relative(root, index))]
    if found:
        return []
    pickles = sorted(path.name for path in folder.glob("*") if path.suffix in _PICKLE_SUFFIXES)
    note = f"only pickle weights found ({', '.join(pickles)}); safetensors required" if pickles else ""
    return [_Missing(root, _relative(root, folder / needs.weights), note)]


def _missing(layout: _Layout) -> list[_Missing]:
    needs = NEEDS[layout.spec.role]
    borrowed = layout.borrows_config
    missing = [_Missing(layout.config_root, _relative(layout.config_root, layout.config_folder / name),
                        borrowed=borrowed)
               for name in needs.configs if not (layout.config_folder / name).is_file()]
    if needs.one_of and not any(all((layout.folder / name).is_file() for name in group) for group in needs.one_of):
        # Name the files of the group closest to complete, so the user sees what to add.
        group = max(needs.one_of, key=lambda names: sum((layout.folder / name).is_file() for name in names))
        alternatives = " or ".join("+".join(names) for names in needs.one_of if names != group)
        missing += [_Missing(layout.root, _relative(layout.root, layout.folder / name), f"or {alternatives}")
                    for name in group if not (layout.folder / name).is_file()]
    if needs.weights:
        missing += _missing_weights(layout, needs)
    return missing


def _size_on_disk(layout: _Layout) -> int:
    files = {path for pattern in layout.spec.patterns for path in layout.folder.glob(pattern) if path.is_file()}
    if layout.borrows_config:
        files |= {layout.config_folder / name for name in NEEDS[layout.spec.role].configs
                  if (layout.config_folder / name).is_file()}
    return sum(path.stat().st_size for path in files)


def _relative(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def _checks(preset: Preset, models_dir: Path) -> list[tuple[_Layout, list[_Missing]]]:
    """Each component's layout with what it lacks, in the preset's order."""
    layouts = [_layout(preset, spec, Path(models_dir)) for spec in preset.components]
    return [(layout, _missing(layout)) for layout in layouts]


def component_status(preset: Preset, models_dir: Path = DEFAULT_MODELS_DIR) -> list[ComponentStatus]:
    """Whether each component could load from disk, what it lacks, and its size on disk."""
    return [
        ComponentStatus(
            role=layout.spec.role,
            expected_at=layout.folder,
            present=not missing,
            # A borrowed config lives under another repo; say which, since the path alone is ambiguous.
            missing=tuple(f"{item.label} (from {item.root})" if item.root != layout.root else item.label
                          for item in missing),
            size_bytes=_size_on_disk(layout),
        )
        for layout, missing in _checks(preset, models_dir)
    ]


def human_bytes(size: float) -> str:
    """Sizes as hubs and disks state them (decimal units): "41.0 GB", "254.0 MB", "12 B"."""
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


def model_size_on_disk(preset: Preset, models_dir: Path = DEFAULT_MODELS_DIR) -> int:
    return sum(status.size_bytes for status in component_status(preset, models_dir))


def resolve(preset: Preset, models_dir: Path = DEFAULT_MODELS_DIR) -> dict[Role, ResolvedComponent]:
    """The folders of every component; MissingFilesError naming what is missing and how to get it."""
    checks = _checks(preset, models_dir)
    if any(missing for _, missing in checks):
        raise MissingFilesError(_describe(preset, checks), _hint(preset, checks))
    return _resolved(checks)


def _resolved(checks: list[tuple[_Layout, list[_Missing]]]) -> dict[Role, ResolvedComponent]:
    return {layout.spec.role: ResolvedComponent(layout.spec.role, layout.folder, layout.config_folder)
            for layout, _ in checks}


def download_command(preset: Preset) -> str:
    """The CLI command that fetches a preset's missing files."""
    if _is_user_folder(preset):
        return f"python -m engine download --model {shlex.quote(str(preset.folder))}"
    return f"python -m engine download --preset {shlex.quote(preset.name)}"


def _is_user_folder(preset: Preset) -> bool:
    """A preset made by preset_for_folder, as opposed to one read from presets/*.toml."""
    return preset.source is None and preset.folder is not None


def _describe(preset: Preset, checks: list[tuple[_Layout, list[_Missing]]]) -> str:
    """One line: how many files are missing, under which folders, the first few by name."""
    missing = [item for _, items in checks for item in items]
    groups: dict[Path, list[str]] = {}
    for item in missing[:_LISTED]:
        groups.setdefault(item.root, []).append(item.label)
    listing = "; ".join(f"under {root}: {', '.join(labels)}" for root, labels in groups.items())
    if len(missing) > _LISTED:
        listing += f", and {len(missing) - _LISTED} more"
    count = f"{len(missing)} file{'s' if len(missing) != 1 else ''}"
    subject = f"Model folder '{preset.name}'" if _is_user_folder(preset) else f"Preset '{preset.name}'"
    separator = " " if len(groups) == 1 else ": "
    return f"{subject} is missing {count}{separator}{listing}."


def _from_hub(item: _Missing, layout: _Layout) -> bool:
    """Whether a missing file belongs in a hub repo, rather than in a folder no hub serves."""
    return bool(layout.spec.config_repo or layout.spec.repo) if item.borrowed else bool(layout.spec.repo)


def _hint(preset: Preset, checks: list[tuple[_Layout, list[_Missing]]]) -> str:
    downloadable = [layout for layout, missing in checks if any(_from_hub(item, layout) for item in missing)]
    hints = []
    if downloadable:
        estimate = _download_estimate(preset, downloadable)
        size = f" (about {estimate})" if estimate else ""
        hints.append(f"Download them with: {download_command(preset)}{size}, or copy the hub repo's files there.")
    if any(not _from_hub(item, layout) for layout, missing in checks for item in missing):
        folders = ", ".join(spec.subfolder or spec.role.value for spec in preset.components if not spec.repo)
        hints.append(f"A model folder must hold the diffusers layout: model_index.json and one subfolder per "
                     f"component ({folders}), each with its config and safetensors weights as in the hub repo.")
    return " ".join(hints)


def _download_estimate(preset: Preset, incomplete: list[_Layout]) -> str:
    """About how much the incomplete components weigh, less what of them is on disk; "" when unknown."""
    sizes = [TYPICAL_BYTES.get((preset.family, layout.spec.role)) for layout in incomplete]
    if None in sizes:
        return ""
    remaining = max(sum(sizes) - sum(_size_on_disk(layout) for layout in incomplete), 0)
    if remaining >= 10**10:
        return f"{remaining / 10**9:.0f} GB"
    if remaining >= 10**9:
        return f"{remaining / 10**9:.1f} GB"
    return f"{max(remaining / 10**6, 1):.0f} MB"


@dataclass(frozen=True)
class _Fetch:
    """One snapshot request: a repo on the hub, the files wanted from it, and the folder they land in."""

    repo_id: str
    local_dir: Path  # models/<ModelScope id>, whichever hub serves the files
    patterns: tuple[str, ...]


def _fetches(preset: Preset, models_dir: Path, hub: Hub) -> list[_Fetch]:
    """One request per repo that lacks files, with the patterns of every incomplete component in it."""
    wanted: dict[tuple[str, Path], list[str]] = {}
    for layout, missing in _checks(preset, models_dir):
        spec = layout.spec
        own_id = (spec.huggingface or spec.repo) if hub is Hub.HUGGINGFACE else spec.repo
        for item in missing:
            if item.borrowed:
                local = spec.config_repo or spec.repo
                # Configs are borrowed from official repos, which Hugging Face mirrors under the same ids.
                repo_id = spec.config_repo or own_id
                patterns = [_join(spec.config_subfolder, name) for name in NEEDS[spec.role].configs]
            else:
                local, repo_id = spec.repo, own_id
                patterns = [_join(spec.subfolder, pattern) for pattern in spec.patterns]
            if not local:
                continue  # the file belongs in a folder that no hub serves
            key = (repo_id, models_dir / local)
            bucket = wanted.setdefault(key, [])
            bucket += [pattern for pattern in patterns if pattern not in bucket]
    return [_Fetch(repo_id, local_dir, tuple(patterns)) for (repo_id, local_dir), patterns in wanted.items()]


def _join(subfolder: str, name: str) -> str:
    return f"{subfolder}/{name}" if subfolder else name


class _ByteTally:
    """Bytes fetched and expected over one download() call; the hubs report into it from worker threads."""

    def __init__(self, progress: Progress):
        self._progress = progress
        self._lock = threading.Lock()
        self._done = 0
        self._total = 0

    def expect(self, size: int) -> None:
        with self._lock:
            self._total += size

    def advance(self, size: int, name: str) -> None:
        # Reporting under the lock keeps the figures the callback sees in order across threads.
        with self._lock:
            self._done += size
            self._progress(self._done, max(self._total, self._done), name)


def _modelscope_callback_class(tally: _ByteTally) -> type:
    """A ModelScope progress callback feeding the tally."""
    from modelscope.hub.callback import ProgressCallback

    class Report(ProgressCallback):
        # ModelScope makes one per file, with its size, then calls update with each chunk's byte count.
        def __init__(self, filename: str, file_size: int):
            super().__init__(filename, file_size)
            tally.expect(file_size)

        def update(self, size: int) -> None:
            tally.advance(size, self.filename)

    return Report


def _fetch_modelscope(fetch: _Fetch, tally: _ByteTally | None) -> None:
    import modelscope

    modelscope.snapshot_download(fetch.repo_id, allow_patterns=list(fetch.patterns), local_dir=str(fetch.local_dir),
                                 progress_callbacks=[_modelscope_callback_class(tally)] if tally else None)


# huggingface_hub (1.x, 2.x) names the bar that counts bytes written so; a sibling bar ("...transfer") counts
# network bytes, and counting both would double the figures. Under names we do not know, no progress is reported.
_HF_BYTES_BAR = "huggingface_hub.snapshot_download"


def _hf_bar_class(tally: _ByteTally, label: str) -> type:
    """A silent tqdm class for huggingface_hub.snapshot_download feeding the tally."""
    from huggingface_hub.utils import tqdm as hf_tqdm

    class Bar(hf_tqdm):
        def __init__(self, *args, **kwargs):
            self._counts = kwargs.get("name") == _HF_BYTES_BAR
            self._expected = 0
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

        # The hub grows the bar's total by assignment as each file starts.
        @property
        def total(self) -> int:
            return self._expected

        @total.setter
        def total(self, value: int | None) -> None:
            if self._counts:
                tally.expect((value or 0) - self._expected)
            self._expected = value or 0

        def update(self, n: float | None = 1) -> bool | None:
            if self._counts and n:
                tally.advance(int(n), label)
            return super().update(n)

    return Bar


def _fetch_huggingface(fetch: _Fetch, tally: _ByteTally | None) -> None:
    import huggingface_hub

    huggingface_hub.snapshot_download(fetch.repo_id, allow_patterns=list(fetch.patterns),
                                      local_dir=str(fetch.local_dir),
                                      tqdm_class=_hf_bar_class(tally, fetch.repo_id) if tally else None)


FETCHERS: dict[Hub, Callable[[_Fetch, _ByteTally | None], None]] = {
    Hub.MODELSCOPE: _fetch_modelscope,
    Hub.HUGGINGFACE: _fetch_huggingface,
}


def _hub_errors(hub: Hub) -> tuple[type[BaseException], ...]:
    """What a hub client raises when the network, the repo or the files fail; anything else is our bug."""
    if hub is Hub.MODELSCOPE:
        from modelscope.hub.errors import HubError

        return OSError, ValueError, HubError  # requests' errors are OSErrors
    import httpx
    from huggingface_hub.errors import EntryNotFoundError, XetDownloadError

    return OSError, ValueError, EntryNotFoundError, XetDownloadError, httpx.HTTPError


def download(preset: Preset, models_dir: Path = DEFAULT_MODELS_DIR, hub: Hub = Hub.MODELSCOPE,
             progress: Progress | None = None) -> dict[Role, ResolvedComponent]:
    """Fetch what is missing, one snapshot per repo, then resolve.

    progress(done_bytes, total_bytes, name) is called from the hub's worker threads; total_bytes grows as files
    start, and name is the file (ModelScope) or the repo (Hugging Face) the bytes belong to.
    """
    hub, models_dir = Hub(hub), Path(models_dir)
    fetches = _fetches(preset, models_dir, hub)
    if not fetches:
        return resolve(preset, models_dir)
    errors = _hub_errors(hub)  # imports the hub client, which is slow, so only when there is something to fetch
    tally = _ByteTally(progress) if progress else None
    for fetch in fetches:
        logger.info("Fetching %s from %s into %s: %s", fetch.repo_id, HUB_TITLES[hub], fetch.local_dir,
                    ", ".join(fetch.patterns))
        try:
            FETCHERS[hub](fetch, tally)
        except errors as error:
            checks = _checks(preset, models_dir)
            reason = " ".join(f"{type(error).__name__}: {error}".split())  # the CLI prints one line
            other = HUB_TITLES[Hub.HUGGINGFACE if hub is Hub.MODELSCOPE else Hub.MODELSCOPE]
            raise MissingFilesError(
                f"Downloading {fetch.repo_id} from {HUB_TITLES[hub]} failed ({reason}). {_describe(preset, checks)}",
                f"Check the network connection and run {download_command(preset)} again, try the other hub "
                f"({other}), or copy the hub repo's files to {fetch.local_dir}.") from error
    checks = _checks(preset, models_dir)
    if any(missing for _, missing in checks):
        raise MissingFilesError(
            f"{_describe(preset, checks)} {HUB_TITLES[hub]} did not provide them.",
            "The hub repo's layout may differ from the preset's file patterns; check the preset, "
            "or copy the hub repo's files there.")
    return _resolved(checks)
