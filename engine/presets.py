"""Presets: one TOML file per model, read and validated into frozen dataclasses.

A preset says which files a model needs and where they come from (a hub repo per component, or a folder
shipped inside presets/), the defaults the studio and CLI start from, the limits they enforce, and the
tabs it serves. Every field is checked here, once, and a bad file gets an error naming the file and the
field. A folder in the diffusers layout (model_index.json) becomes a preset too, so `--model DIR` and
`--preset NAME` share the rest of the engine.
"""

from __future__ import annotations

import difflib
import json
import tomllib
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from engine.errors import PresetError
from engine.toml_values import TypedTable

PRESETS_DIR = Path(__file__).resolve().parent.parent / "presets"
DEFAULT_PRESET = "tiny-shapes"


class Family(str, Enum):
    QWEN_IMAGE = "qwen_image"


class Tab(str, Enum):
    TEXT_TO_IMAGE = "text_to_image"
    EDIT = "edit"
    INPAINT = "inpaint"
    REGIONS = "regions"
    VIDEO = "video"
    TRAIN = "train"


class Role(str, Enum):
    """The part a component plays in a pipeline; also its folder name in a diffusers repo."""

    TRANSFORMER = "transformer"
    VAE = "vae"
    TEXT_ENCODER = "text_encoder"
    TOKENIZER = "tokenizer"
    SCHEDULER = "scheduler"


# Files each role needs, as globs relative to the component's folder. Weights are safetensors only.
DEFAULT_PATTERNS: dict[Role, tuple[str, ...]] = {
    Role.TRANSFORMER: ("config.json", "diffusion_pytorch_model*.safetensors", "diffusion_pytorch_model.safetensors.index.json"),
    Role.VAE: ("config.json", "diffusion_pytorch_model*.safetensors"),
    Role.TEXT_ENCODER: ("config.json", "generation_config.json", "model*.safetensors", "model.safetensors.index.json"),
    Role.TOKENIZER: ("*.json", "*.txt", "*.jinja"),
    Role.SCHEDULER: ("scheduler_config.json",),
}

FAMILY_ROLES: dict[Family, tuple[Role, ...]] = {
    Family.QWEN_IMAGE: (Role.TRANSFORMER, Role.VAE, Role.TEXT_ENCODER, Role.TOKENIZER, Role.SCHEDULER),
}

# What diffusers writes as model_index.json "_class_name" for each family's repos.
PIPELINE_CLASS_FAMILY: dict[str, Family] = {
    "QwenImagePipeline": Family.QWEN_IMAGE,
}


@dataclass(frozen=True)
class ComponentSpec:
    """Where one component's files come from."""

    role: Role
    repo: str  # ModelScope repo id ("" when the files ship inside presets/ or sit in a user folder)
    subfolder: str  # the component's folder inside the repo ("" = repo root)
    patterns: tuple[str, ...]
    huggingface: str = ""  # Hugging Face repo id, the alternative hub
    config_repo: str = ""  # borrow config.json from another repo (weight-only repos such as Distill-Full)
    config_subfolder: str = ""


@dataclass(frozen=True)
class Defaults:
    width: int
    height: int
    steps: int
    cfg: float
    negative_prompt: str = " "


@dataclass(frozen=True)
class Limits:
    min_side: int = 16
    max_side: int = 2048
    multiple: int = 16  # VAE factor 8 x patch 2


@dataclass(frozen=True)
class TrainingDefaults:
    """Where a LoRA run on this model starts (the Train tab's form). Rank 16 at 1e-4 with batch 1 are the common
    starting points for large models (REFERENCE.md, Training); a tiny model learns faster with more of each."""

    steps: int = 600
    rank: int = 16
    learning_rate: float = 1e-4
    batch_size: int = 1
    sample_every: int = 100


@dataclass(frozen=True)
class Preset:
    name: str
    title: str
    family: Family
    tabs: tuple[Tab, ...]
    defaults: Defaults
    limits: Limits
    sizes: tuple[tuple[int, int], ...]  # aspect presets offered by the UI, (width, height)
    components: tuple[ComponentSpec, ...]
    notes: str = ""
    folder: Path | None = None  # files live here (shipped tiny models, or a user's folder), not on a hub
    source: Path | None = None  # the TOML file this came from
    training: TrainingDefaults = TrainingDefaults()

    def component(self, role: Role) -> ComponentSpec:
        for spec in self.components:
            if spec.role == role:
                return spec
        raise PresetError(f"Preset '{self.name}' has no {role.value} component.")


FAMILY_DEFAULTS: dict[Family, Defaults] = {
    Family.QWEN_IMAGE: Defaults(width=1328, height=1328, steps=50, cfg=4.0),
}


class _Reader(TypedTable):
    """Reads typed fields from a parsed TOML table, naming file and field in every error."""

    def __init__(self, path: Path, table: dict[str, Any], prefix: str = ""):
        self.path, self.table, self.prefix = path, table, prefix

    def fail(self, key: str, problem: str) -> PresetError:
        return PresetError(f"{self.path}: field '{self.prefix}{key}' {problem}.", "Fix the preset file or remove it.")

    def positive_int(self, key: str, default: Any = ...) -> int:
        value = self.get(key, int, default)
        if value <= 0:
            raise self.fail(key, f"must be a positive integer, got {value}")
        return value

    def enum(self, key: str, enum: type[Enum], default: Any = ...) -> Any:
        value = self.get(key, str, default)
        if isinstance(value, enum):
            return value
        try:
            return enum(value)
        except ValueError:
            allowed = ", ".join(member.value for member in enum)
            raise self.fail(key, f"must be one of {allowed}, got {value!r}") from None

    def sub(self, key: str) -> "_Reader":
        return _Reader(self.path, self.get(key, dict, {}), f"{self.prefix}{key}.")

    def check_known(self, known: set[str]) -> None:
        for key in self.table:
            if key not in known:
                raise self.fail(key, f"is not a known field (known: {', '.join(sorted(known))})")


def _read_defaults(reader: _Reader, family: Family) -> Defaults:
    base = FAMILY_DEFAULTS[family]
    reader.check_known({"width", "height", "steps", "cfg", "negative_prompt"})
    cfg = reader.get("cfg", float, base.cfg)
    if cfg < 1.0:
        raise reader.fail("cfg", f"must be at least 1.0 (1 disables guidance), got {cfg}")
    return Defaults(
        width=reader.positive_int("width", base.width),
        height=reader.positive_int("height", base.height),
        steps=reader.positive_int("steps", base.steps),
        cfg=cfg,
        negative_prompt=reader.get("negative_prompt", str, base.negative_prompt),
    )


def _read_limits(reader: _Reader) -> Limits:
    reader.check_known({"min_side", "max_side", "multiple"})
    limits = Limits(
        min_side=reader.positive_int("min_side", Limits.min_side),
        max_side=reader.positive_int("max_side", Limits.max_side),
        multiple=reader.positive_int("multiple", Limits.multiple),
    )
    if limits.min_side > limits.max_side:
        raise reader.fail("min_side", f"({limits.min_side}) must not exceed max_side ({limits.max_side})")
    return limits


def _read_training(reader: _Reader) -> TrainingDefaults:
    base = TrainingDefaults()
    reader.check_known({"steps", "rank", "learning_rate", "batch_size", "sample_every"})
    learning_rate = reader.get("learning_rate", float, base.learning_rate)
    if not learning_rate > 0:
        raise reader.fail("learning_rate", f"must be positive, got {learning_rate}")
    return TrainingDefaults(
        steps=reader.positive_int("steps", base.steps),
        rank=reader.positive_int("rank", base.rank),
        learning_rate=learning_rate,
        batch_size=reader.positive_int("batch_size", base.batch_size),
        sample_every=reader.positive_int("sample_every", base.sample_every),
    )


def _read_components(reader: _Reader, family: Family, hub: _Reader) -> tuple[ComponentSpec, ...]:
    hub.check_known({"modelscope", "huggingface"})
    default_repo = hub.get("modelscope", str, "")
    default_hf = hub.get("huggingface", str, default_repo)
    specs = []
    for role in FAMILY_ROLES[family]:
        table = reader.sub(role.value)
        table.check_known({"repo", "huggingface", "subfolder", "patterns", "config_repo", "config_subfolder"})
        patterns = table.get("patterns", list, list(DEFAULT_PATTERNS[role]))
        if not patterns or not all(isinstance(p, str) and p for p in patterns):
            raise table.fail("patterns", "must be a non-empty list of file globs")
        repo = table.get("repo", str, default_repo)
        specs.append(
            ComponentSpec(
                role=role,
                repo=repo,
                subfolder=table.get("subfolder", str, role.value).strip("/"),
                patterns=tuple(patterns),
                huggingface=table.get("huggingface", str, default_hf if repo == default_repo else repo),
                config_repo=table.get("config_repo", str, ""),
                config_subfolder=table.get("config_subfolder", str, ""),
            )
        )
    unknown = set(reader.table) - {role.value for role in FAMILY_ROLES[family]}
    if unknown:
        raise reader.fail(sorted(unknown)[0], f"is not a component of the {family.value} family")
    return tuple(specs)


def _read_sizes(reader: _Reader, defaults: Defaults) -> tuple[tuple[int, int], ...]:
    raw = reader.get("sizes", list, [[defaults.width, defaults.height]])
    sizes = []
    for item in raw:
        if not (isinstance(item, list) and len(item) == 2 and all(isinstance(v, int) and v > 0 for v in item)):
            raise reader.fail("sizes", f"must be a list of [width, height] pairs of positive integers, got {item!r}")
        sizes.append((item[0], item[1]))
    return tuple(sizes)


def read_preset(path: Path) -> Preset:
    """Parse and validate one preset file."""
    path = Path(path)
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise PresetError(f"{path}: not valid TOML ({error}).", "Fix the preset file or remove it.") from None
    reader = _Reader(path, table)
    reader.check_known({"name", "title", "family", "tabs", "notes", "folder", "sizes",
                        "defaults", "limits", "hub", "components", "training"})
    name = reader.get("name", str)
    if name != path.stem:
        raise reader.fail("name", f"must equal the file name '{path.stem}', got {name!r}")
    family = reader.enum("family", Family)
    tabs = []
    for index, value in enumerate(reader.get("tabs", list)):
        tabs.append(_Reader(path, {f"tabs[{index}]": value}).enum(f"tabs[{index}]", Tab))
    if not tabs:
        raise reader.fail("tabs", "must name at least one tab")
    defaults = _read_defaults(reader.sub("defaults"), family)
    limits = _read_limits(reader.sub("limits"))
    for side_name in ("width", "height"):
        side = getattr(defaults, side_name)
        if not limits.min_side <= side <= limits.max_side or side % limits.multiple:
            raise reader.sub("defaults").fail(
                side_name, f"({side}) must be a multiple of {limits.multiple} within [{limits.min_side}, {limits.max_side}]")
    folder_name = reader.get("folder", str, "")
    folder = (path.parent / folder_name).resolve() if folder_name else None
    hub = reader.sub("hub")
    if folder is None and not hub.get("modelscope", str, ""):
        raise reader.fail("hub.modelscope", "is missing (a preset needs a hub repo or a shipped folder)")
    return Preset(
        name=name,
        title=reader.get("title", str, name),
        family=family,
        tabs=tuple(tabs),
        defaults=defaults,
        limits=limits,
        sizes=_read_sizes(reader, defaults),
        components=_read_components(reader.sub("components"), family, hub),
        notes=reader.get("notes", str, "").strip(),
        folder=folder,
        source=path,
        training=_read_training(reader.sub("training")),
    )


def preset_names(presets_dir: Path = PRESETS_DIR) -> list[str]:
    return sorted(path.stem for path in Path(presets_dir).glob("*.toml"))


def load_preset(name: str, presets_dir: Path = PRESETS_DIR) -> Preset:
    """The preset called `name`; an unknown name gets the close matches as a suggestion."""
    path = Path(presets_dir) / f"{name}.toml"
    if not path.is_file():
        names = preset_names(presets_dir)
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f"Did you mean {', '.join(close)}?" if close else f"Known presets: {', '.join(names) or 'none'}."
        raise PresetError(f"Unknown preset '{name}'.", hint)
    return read_preset(path)


def all_presets(presets_dir: Path = PRESETS_DIR) -> list[Preset]:
    return [load_preset(name, presets_dir) for name in preset_names(presets_dir)]


def preset_for_folder(folder: Path) -> Preset:
    """A preset for a model folder in the diffusers layout (model_index.json at its root)."""
    folder = Path(folder).resolve()
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        raise PresetError(
            f"{folder} is not a model folder: model_index.json is missing.",
            "Point --model at the root of a diffusers-layout repo (the folder holding model_index.json).",
        )
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PresetError(f"{index_path}: not valid JSON ({error}).") from None
    class_name = index.get("_class_name", "")
    family = PIPELINE_CLASS_FAMILY.get(class_name)
    if family is None:
        known = ", ".join(PIPELINE_CLASS_FAMILY)
        raise PresetError(f"{index_path}: pipeline '{class_name}' is not supported.", f"Supported: {known}.")
    defaults = FAMILY_DEFAULTS[family]
    return Preset(
        name=folder.name,
        title=folder.name,
        family=family,
        tabs=(Tab.TEXT_TO_IMAGE,),
        defaults=defaults,
        limits=Limits(),
        sizes=((defaults.width, defaults.height),),
        components=tuple(
            ComponentSpec(role=role, repo="", subfolder=role.value, patterns=DEFAULT_PATTERNS[role])
            for role in FAMILY_ROLES[family]
        ),
        folder=folder,
    )
