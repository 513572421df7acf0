"""Where preset files come from: the models folder in the hub layout, borrowed configs, folders, downloads.

The hub repos are built in tmp_path with the real file names and shard counts (tiny tensors); the hub clients'
snapshot_download is replaced by a fake that copies from there, so no test touches the network.
"""

from __future__ import annotations

import fnmatch
import json
import shutil
from dataclasses import replace
from pathlib import Path

import huggingface_hub
import modelscope
import pytest
import torch
from safetensors.torch import save_file

from engine.errors import MissingFilesError
from engine.presets import Role, load_preset, preset_for_folder
from engine.sources import (
    Hub,
    ResolvedComponent,
    component_status,
    download,
    download_command,
    model_size_on_disk,
    resolve,
)

QWEN = "Qwen/Qwen-Image"
DISTILL = "DiffSynth-Studio/Qwen-Image-Distill-Full"


def _write_json(path: Path, value: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value), encoding="utf-8")


def _write_shards(folder: Path, stem: str, count: int) -> None:
    """count safetensors shards named as the hub names them, and the index whose weight_map names them."""
    folder.mkdir(parents=True, exist_ok=True)
    if count == 1:
        save_file({"weight": torch.zeros(4)}, str(folder / f"{stem}.safetensors"))
        return
    weight_map = {}
    for number in range(1, count + 1):
        shard = f"{stem}-{number:05d}-of-{count:05d}.safetensors"
        save_file({f"blocks.{number}.weight": torch.full((4,), float(number))}, str(folder / shard))
        weight_map[f"blocks.{number}.weight"] = shard
    _write_json(folder / f"{stem}.safetensors.index.json", {"metadata": {"total_size": 16 * count},
                                                            "weight_map": weight_map})


def _build_qwen_image(root: Path, transformer: bool = True) -> Path:
    """Qwen/Qwen-Image as the hub lays it out: 9 transformer shards, 4 text encoder shards, one VAE file."""
    _write_json(root / "model_index.json", {"_class_name": "QwenImagePipeline"})
    _write_json(root / "transformer" / "config.json", {"_class_name": "QwenImageTransformer2DModel"})
    if transformer:
        _write_shards(root / "transformer", "diffusion_pytorch_model", 9)
    _write_json(root / "vae" / "config.json", {"_class_name": "AutoencoderKLQwenImage"})
    _write_shards(root / "vae", "diffusion_pytorch_model", 1)
    _write_json(root / "text_encoder" / "config.json", {"architectures": ["Qwen2_5_VLForConditionalGeneration"]})
    _write_json(root / "text_encoder" / "generation_config.json", {"do_sample": True})
    _write_shards(root / "text_encoder", "model", 4)
    _write_json(root / "tokenizer" / "tokenizer_config.json", {"tokenizer_class": "Qwen2Tokenizer"})
    _write_json(root / "tokenizer" / "vocab.json", {"a": 0, "b": 1})
    (root / "tokenizer" / "merges.txt").write_text("#version: 0.2\na b\n", encoding="utf-8")
    _write_json(root / "scheduler" / "scheduler_config.json", {"_class_name": "FlowMatchEulerDiscreteScheduler"})
    return root


def _build_distill(root: Path) -> Path:
    """The Distill-Full repo: transformer weights at the repo root, no config."""
    _write_shards(root, "diffusion_pytorch_model", 5)
    return root


@pytest.fixture()
def hub_dir(tmp_path) -> Path:
    """What the hubs serve, one folder per repo id."""
    hub = tmp_path / "hub"
    _build_qwen_image(hub / QWEN)
    _build_distill(hub / DISTILL)
    return hub


@pytest.fixture()
def models_dir(tmp_path) -> Path:
    return tmp_path / "models"


def _install(hub_dir: Path, models_dir: Path, repo: str) -> Path:
    return Path(shutil.copytree(hub_dir / repo, models_dir / repo))


def _files_bytes(folder: Path, skip: tuple[str, ...] = ()) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file() and path.name not in skip)


class FakeHub:
    """Stands in for a hub client's snapshot_download: records each call and copies the matching files."""

    def __init__(self, hub_dir: Path, error: Exception | None = None):
        self.hub_dir, self.error = hub_dir, error
        self.calls: list[dict] = []

    def matching(self, repo_id: str, patterns: list[str]) -> list[Path]:
        repo = self.hub_dir / repo_id
        return sorted(path for path in repo.rglob("*") if path.is_file() and any(
            fnmatch.fnmatch(path.relative_to(repo).as_posix(), pattern) for pattern in patterns))

    def copy(self, repo_id: str, patterns: list[str], local_dir: str) -> list[tuple[str, int]]:
        if self.error is not None:
            raise self.error
        copied = []
        for path in self.matching(repo_id, patterns):
            relative = path.relative_to(self.hub_dir / repo_id).as_posix()
            target = Path(local_dir) / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            copied.append((relative, path.stat().st_size))
        return copied


class FakeModelScope(FakeHub):
    def __call__(self, model_id, allow_patterns=None, local_dir=None, progress_callbacks=None, **kwargs):
        self.calls.append(dict(repo_id=model_id, allow_patterns=allow_patterns, local_dir=local_dir, **kwargs))
        for relative, size in self.copy(model_id, allow_patterns, local_dir):
            # As modelscope does: one callback per file with its size, then the chunks' byte counts.
            for callback in [cls(relative, size) for cls in progress_callbacks or []]:
                callback.update(size // 2)
                callback.update(size - size // 2)
                callback.end()
        return local_dir


class FakeHuggingFace(FakeHub):
    def __call__(self, repo_id, allow_patterns=None, local_dir=None, tqdm_class=None, **kwargs):
        self.calls.append(dict(repo_id=repo_id, allow_patterns=allow_patterns, local_dir=local_dir, **kwargs))
        copied = self.copy(repo_id, allow_patterns, local_dir)
        if tqdm_class is not None:
            # As huggingface_hub does: a bar of bytes written whose total grows as each file starts.
            bar = tqdm_class(name="huggingface_hub.snapshot_download", total=0, unit="B")
            transfer = tqdm_class(name="huggingface_hub.snapshot_download.transfer", total=0, unit="B")
            for _, size in copied:
                bar.total = (bar.total or 0) + size
                bar.update(size)
                transfer.update(size)
            bar.close()
            transfer.close()
        return local_dir


def _refuse(*args, **kwargs):
    raise AssertionError("a test reached a real hub client")


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Every test that does not install a fake gets a client that fails loudly instead of going online."""
    monkeypatch.setattr(modelscope, "snapshot_download", _refuse)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", _refuse)


def test_resolve_returns_component_folders_when_all_files_present(hub_dir, models_dir):
    repo = _install(hub_dir, models_dir, QWEN)

    resolved = resolve(load_preset("qwen-image"), models_dir)

    assert resolved == {role: ResolvedComponent(role, repo / role.value, repo / role.value) for role in Role}


def test_size_on_disk_is_sum_of_component_files_when_all_present(hub_dir, models_dir):
    repo = _install(hub_dir, models_dir, QWEN)
    preset = load_preset("qwen-image")

    statuses = component_status(preset, models_dir)

    assert all(status.present and status.missing == () for status in statuses)
    assert {status.role: status.size_bytes for status in statuses} == {
        role: _files_bytes(repo / role.value) for role in Role}
    assert model_size_on_disk(preset, models_dir) == _files_bytes(repo, skip=("model_index.json",))


def test_error_names_missing_shard_and_download_command_when_one_shard_missing(hub_dir, models_dir):
    repo = _install(hub_dir, models_dir, QWEN)
    (repo / "transformer" / "diffusion_pytorch_model-00003-of-00009.safetensors").unlink()

    with pytest.raises(MissingFilesError) as caught:
        resolve(load_preset("qwen-image"), models_dir)

    assert str(caught.value) == (
        f"Preset 'qwen-image' is missing 1 file under {repo}: "
        "transformer/diffusion_pytorch_model-00003-of-00009.safetensors. "
        "Download them with: python -m engine download --preset qwen-image (about 41 GB), "
        "or copy the hub repo's files there.")


def test_status_lists_each_missing_shard_when_several_shards_missing(hub_dir, models_dir):
    repo = _install(hub_dir, models_dir, QWEN)
    for number in (2, 4):
        (repo / "text_encoder" / f"model-0000{number}-of-00004.safetensors").unlink()

    statuses = {status.role: status for status in component_status(load_preset("qwen-image"), models_dir)}

    assert not statuses[Role.TEXT_ENCODER].present
    assert statuses[Role.TEXT_ENCODER].expected_at == repo / "text_encoder"
    assert statuses[Role.TEXT_ENCODER].missing == ("text_encoder/model-00002-of-00004.safetensors",
                                                   "text_encoder/model-00004-of-00004.safetensors")
    assert all(statuses[role].present for role in Role if role is not Role.TEXT_ENCODER)


def test_error_lists_first_files_and_counts_the_rest_when_nothing_downloaded(models_dir):
    with pytest.raises(MissingFilesError) as caught:
        resolve(load_preset("qwen-image"), models_dir)

    message = str(caught.value)
    assert message.startswith(f"Preset 'qwen-image' is missing 9 files under {models_dir / QWEN}: "
                              "transformer/config.json, transformer/diffusion_pytorch_model*.safetensors, ")
    assert ", and 3 more." in message
    assert "python -m engine download --preset qwen-image (about 58 GB)" in caught.value.hint
    assert "\n" not in message


def test_error_says_safetensors_required_when_only_pickle_weights_present(hub_dir, models_dir):
    repo = _install(hub_dir, models_dir, QWEN)
    (repo / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    (repo / "vae" / "diffusion_pytorch_model.bin").write_bytes(b"pickle")

    with pytest.raises(MissingFilesError) as caught:
        resolve(load_preset("qwen-image"), models_dir)

    assert ("vae/diffusion_pytorch_model*.safetensors (only pickle weights found (diffusion_pytorch_model.bin); "
            "safetensors required)") in str(caught.value)


def test_index_reported_missing_when_shards_present_without_it(hub_dir, models_dir):
    repo = _install(hub_dir, models_dir, QWEN)
    (repo / "transformer" / "diffusion_pytorch_model.safetensors.index.json").unlink()

    statuses = {status.role: status for status in component_status(load_preset("qwen-image"), models_dir)}

    assert statuses[Role.TRANSFORMER].missing == ("transformer/diffusion_pytorch_model.safetensors.index.json",)


def test_tokenizer_present_when_it_has_tokenizer_json_instead_of_vocab_and_merges(hub_dir, models_dir):
    repo = _install(hub_dir, models_dir, QWEN)
    (repo / "tokenizer" / "vocab.json").unlink()
    (repo / "tokenizer" / "merges.txt").unlink()
    statuses = {status.role: status for status in component_status(load_preset("qwen-image"), models_dir)}
    assert statuses[Role.TOKENIZER].missing == ("tokenizer/tokenizer.json (or vocab.json+merges.txt)",)

    _write_json(repo / "tokenizer" / "tokenizer.json", {"model": {"type": "BPE"}})

    assert resolve(load_preset("qwen-image"), models_dir)[Role.TOKENIZER].folder == repo / "tokenizer"


def test_resolve_borrows_transformer_config_when_preset_is_distill_full(hub_dir, models_dir):
    _build_qwen_image(models_dir / QWEN, transformer=False)  # only the config of Qwen-Image's transformer
    distill = _install(hub_dir, models_dir, DISTILL)

    resolved = resolve(load_preset("qwen-image-distill-full"), models_dir)

    assert resolved[Role.TRANSFORMER] == ResolvedComponent(Role.TRANSFORMER, distill, models_dir / QWEN / "transformer")
    assert resolved[Role.VAE].folder == resolved[Role.VAE].config_folder == models_dir / QWEN / "vae"


def test_status_names_borrowed_config_and_its_repo_when_it_is_missing(hub_dir, models_dir):
    _build_qwen_image(models_dir / QWEN, transformer=False)
    distill = _install(hub_dir, models_dir, DISTILL)
    (models_dir / QWEN / "transformer" / "config.json").unlink()

    statuses = {status.role: status for status in component_status(load_preset("qwen-image-distill-full"),
                                                                    models_dir)}

    transformer = statuses[Role.TRANSFORMER]
    assert transformer.expected_at == distill
    assert transformer.missing == (f"transformer/config.json (from {models_dir / QWEN})",)
    assert transformer.size_bytes == _files_bytes(distill)


def test_download_fetches_each_repo_once_with_its_patterns_when_nothing_present(hub_dir, models_dir, monkeypatch):
    fake = FakeModelScope(hub_dir)
    monkeypatch.setattr(modelscope, "snapshot_download", fake)
    reports = []

    resolved = download(load_preset("qwen-image-distill-full"), models_dir,
                        progress=lambda done, total, name: reports.append((done, total, name)))

    assert [(call["repo_id"], call["local_dir"]) for call in fake.calls] == [
        (QWEN, str(models_dir / QWEN)), (DISTILL, str(models_dir / DISTILL))]
    qwen_patterns, distill_patterns = (call["allow_patterns"] for call in fake.calls)
    assert "transformer/config.json" in qwen_patterns  # the borrowed config
    assert not any(pattern.startswith("transformer/diffusion_pytorch_model") for pattern in qwen_patterns)
    assert {"vae/diffusion_pytorch_model*.safetensors", "text_encoder/model*.safetensors",
            "text_encoder/model.safetensors.index.json", "scheduler/scheduler_config.json"} <= set(qwen_patterns)
    assert distill_patterns == ["diffusion_pytorch_model*.safetensors",
                                "diffusion_pytorch_model.safetensors.index.json"]
    assert resolved == resolve(load_preset("qwen-image-distill-full"), models_dir)
    assert resolved[Role.TRANSFORMER].config_folder == models_dir / QWEN / "transformer"
    fetched = _files_bytes(models_dir)
    assert reports[-1][:2] == (fetched, fetched)
    assert [done for done, _, _ in reports] == sorted(done for done, _, _ in reports)
    assert {name for _, _, name in reports} >= {"transformer/config.json", "vae/diffusion_pytorch_model.safetensors"}


def test_download_requests_only_the_repo_that_lacks_files_when_the_other_is_complete(hub_dir, models_dir,
                                                                                     monkeypatch):
    _install(hub_dir, models_dir, QWEN)
    fake = FakeModelScope(hub_dir)
    monkeypatch.setattr(modelscope, "snapshot_download", fake)

    download(load_preset("qwen-image-distill-full"), models_dir)

    assert [call["repo_id"] for call in fake.calls] == [DISTILL]


def test_download_requests_only_the_incomplete_component_when_one_shard_missing(hub_dir, models_dir, monkeypatch):
    repo = _install(hub_dir, models_dir, QWEN)
    (repo / "transformer" / "diffusion_pytorch_model-00007-of-00009.safetensors").unlink()
    fake = FakeModelScope(hub_dir)
    monkeypatch.setattr(modelscope, "snapshot_download", fake)

    download(load_preset("qwen-image"), models_dir)

    assert [(call["repo_id"], call["allow_patterns"]) for call in fake.calls] == [
        (QWEN, ["transformer/config.json", "transformer/diffusion_pytorch_model*.safetensors",
                "transformer/diffusion_pytorch_model.safetensors.index.json"])]
    assert (repo / "transformer" / "diffusion_pytorch_model-00007-of-00009.safetensors").is_file()


def test_download_calls_no_hub_when_all_files_present(hub_dir, models_dir):
    repo = _install(hub_dir, models_dir, QWEN)

    resolved = download(load_preset("qwen-image"), models_dir)  # the autouse fixture fails on any hub call

    assert resolved[Role.TRANSFORMER].folder == repo / "transformer"


def test_download_uses_hugging_face_when_hub_is_huggingface(hub_dir, models_dir, monkeypatch):
    fake = FakeHuggingFace(hub_dir)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    reports = []

    resolved = download(load_preset("qwen-image-distill-full"), models_dir, Hub.HUGGINGFACE,
                        progress=lambda done, total, name: reports.append((done, total, name)))

    assert [(call["repo_id"], call["local_dir"]) for call in fake.calls] == [
        (QWEN, str(models_dir / QWEN)), (DISTILL, str(models_dir / DISTILL))]
    assert fake.calls[1]["allow_patterns"] == ["diffusion_pytorch_model*.safetensors",
                                               "diffusion_pytorch_model.safetensors.index.json"]
    assert resolved == resolve(load_preset("qwen-image-distill-full"), models_dir)
    fetched = _files_bytes(models_dir)
    assert reports[-1] == (fetched, fetched, DISTILL)  # the transfer bar's bytes are not counted twice
    assert {name for _, _, name in reports} == {QWEN, DISTILL}


@pytest.mark.parametrize("hub, client", [(Hub.MODELSCOPE, modelscope), (Hub.HUGGINGFACE, huggingface_hub)])
def test_error_lists_missing_files_with_a_hint_when_hub_unreachable(hub, client, hub_dir, models_dir, monkeypatch):
    fake = FakeHub(hub_dir, ConnectionError("Failed to resolve\n'modelscope.cn'"))
    monkeypatch.setattr(client, "snapshot_download", lambda *args, **kwargs: fake.copy("", [], ""))

    with pytest.raises(MissingFilesError) as caught:
        download(load_preset("qwen-image"), models_dir, hub)

    title = "ModelScope" if hub is Hub.MODELSCOPE else "Hugging Face"
    assert caught.value.message.startswith(
        f"Downloading {QWEN} from {title} failed (ConnectionError: Failed to resolve 'modelscope.cn'). "
        f"Preset 'qwen-image' is missing 9 files under {models_dir / QWEN}: transformer/config.json, ")
    assert "python -m engine download --preset qwen-image" in caught.value.hint
    assert f"copy the hub repo's files to {models_dir / QWEN}" in caught.value.hint


def test_error_says_hub_did_not_provide_files_when_repo_lacks_them(hub_dir, models_dir, monkeypatch):
    shutil.rmtree(hub_dir / QWEN / "scheduler")
    monkeypatch.setattr(modelscope, "snapshot_download", FakeModelScope(hub_dir))

    with pytest.raises(MissingFilesError) as caught:
        download(load_preset("qwen-image"), models_dir)

    assert caught.value.message == (f"Preset 'qwen-image' is missing 1 file under {models_dir / QWEN}: "
                                    "scheduler/scheduler_config.json. ModelScope did not provide them.")


def test_folder_preset_resolves_to_its_subfolders_when_complete(tmp_path):
    folder = _build_qwen_image(tmp_path / "my-qwen")

    resolved = resolve(preset_for_folder(folder), tmp_path / "unused-models")

    assert resolved == {role: ResolvedComponent(role, folder / role.value, folder / role.value) for role in Role}


def test_folder_preset_error_explains_the_layout_when_files_missing(tmp_path):
    folder = tmp_path / "my-qwen"
    _write_json(folder / "model_index.json", {"_class_name": "QwenImagePipeline"})
    _write_json(folder / "vae" / "config.json", {})
    preset = preset_for_folder(folder)

    with pytest.raises(MissingFilesError) as caught:
        download(preset, tmp_path / "models")  # nothing a hub could fetch: no client is called

    assert caught.value.message.startswith(f"Model folder 'my-qwen' is missing 8 files under {folder}: "
                                           "transformer/config.json, ")
    assert "diffusers layout" in caught.value.hint
    assert "transformer, vae, text_encoder, tokenizer, scheduler" in caught.value.hint
    assert "download" not in caught.value.hint


def test_download_command_names_the_preset_or_the_folder(tmp_path):
    folder = _build_qwen_image(tmp_path / "my qwen")

    assert download_command(load_preset("qwen-image")) == "python -m engine download --preset qwen-image"
    assert download_command(preset_for_folder(folder)) == f"python -m engine download --model '{folder}'"


def test_download_puts_hugging_face_files_under_the_modelscope_id_when_ids_differ(hub_dir, models_dir, monkeypatch):
    preset = load_preset("qwen-image")
    preset = replace(preset, components=tuple(replace(spec, huggingface="mirror/Qwen-Image-HF")
                                              for spec in preset.components))
    shutil.copytree(hub_dir / QWEN, hub_dir / "mirror" / "Qwen-Image-HF")
    fake = FakeHuggingFace(hub_dir)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)

    resolved = download(preset, models_dir, Hub.HUGGINGFACE)

    assert [(call["repo_id"], call["local_dir"]) for call in fake.calls] == [
        ("mirror/Qwen-Image-HF", str(models_dir / QWEN))]
    assert resolved[Role.VAE].folder == models_dir / QWEN / "vae"
