"""Loading: hub layouts load through the path a user's download takes; mismatched parts fail clearly."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import engine
from engine.errors import WeightsError
from engine.loading import load_diffusers_module, load_qwen_image
from engine.presets import Role, load_preset, preset_for_folder
from engine.sources import ResolvedComponent, resolve
from engine.weights import read_header


def test_modules_load_in_float32_on_cpu_by_default(tiny_model):
    modules = tiny_model.modules
    assert modules.device == torch.device("cpu") and modules.dtype == torch.float32
    assert {p.dtype for p in modules.transformer.parameters()} == {torch.float32}
    assert not any(p.requires_grad for p in modules.transformer.parameters())


def test_weights_equal_the_files_when_loaded(tiny_qwen_dir, tiny_model):
    from safetensors.torch import load_file

    shard = tiny_qwen_dir / "transformer" / "diffusion_pytorch_model-00001-of-00004.safetensors"
    state = tiny_model.modules.transformer.state_dict()
    for key, tensor in load_file(shard).items():
        assert torch.equal(state[key], tensor), key


def test_bfloat16_load_converts_every_parameter(tiny_qwen_dir):
    components = resolve(preset_for_folder(tiny_qwen_dir))
    modules = load_qwen_image(components, device="cpu", dtype=torch.bfloat16)
    for module in (modules.transformer, modules.vae, modules.text_encoder):
        assert {p.dtype for p in module.parameters()} == {torch.bfloat16}


def test_weight_only_repo_with_borrowed_config_gives_same_image_when_laid_out_like_distill_full(
        tiny_qwen_dir, tiny_model, tmp_path):
    """DiffSynth-Studio/Qwen-Image-Distill-Full ships shards at its root and no config; Qwen/Qwen-Image supplies it."""
    models = tmp_path / "models"
    base = shutil.copytree(tiny_qwen_dir, models / "Qwen" / "Qwen-Image")
    distill = models / "DiffSynth-Studio" / "Qwen-Image-Distill-Full"
    distill.mkdir(parents=True)
    for path in (base / "transformer").glob("diffusion_pytorch_model*"):
        shutil.move(str(path), distill / path.name)
    preset = load_preset("qwen-image-distill-full")
    components = resolve(preset, models)
    assert components[Role.TRANSFORMER].folder == distill
    assert components[Role.TRANSFORMER].config_folder == base / "transformer"
    modules = load_qwen_image(components, device="cpu")
    model = engine.Model(preset=preset, modules=modules, projection=tiny_model.projection)
    settings = dict(width=256, height=256, steps=2, cfg=1.0, seed=1)
    ours = model.generate("a dog", **settings).pixels
    reference = tiny_model.generate("a dog", **settings).pixels
    assert torch.equal(ours, reference)


def test_error_raised_if_weights_do_not_fit_the_config(tiny_qwen_copy):
    config_path = tiny_qwen_copy / "transformer" / "config.json"
    config = json.loads(config_path.read_text())
    config["num_layers"] = 3  # the shards hold 2 blocks
    config_path.write_text(json.dumps(config))
    from diffusers import QwenImageTransformer2DModel

    component = ResolvedComponent(Role.TRANSFORMER, tiny_qwen_copy / "transformer", tiny_qwen_copy / "transformer")
    with pytest.raises(WeightsError) as error:
        load_diffusers_module(QwenImageTransformer2DModel, component, torch.float32, torch.device("cpu"))
    assert str(error.value) == (
        f"The weights in {component.folder} do not fit QwenImageTransformer2DModel built from {config_path}: "
        "32 missing (first: transformer_blocks.2.attn.add_k_proj.bias) tensors. The config and the weights come "
        "from different models; download the component again.")


def test_error_raised_if_a_tensor_has_the_wrong_shape(tiny_qwen_copy):
    config_path = tiny_qwen_copy / "vae" / "config.json"
    config = json.loads(config_path.read_text())
    config["base_dim"] = 12
    config_path.write_text(json.dumps(config))
    with pytest.raises(WeightsError, match="does not fit the model's config"):
        engine.load(tiny_qwen_copy, device="cpu")


def test_error_raised_if_transformer_and_text_encoder_disagree_on_width(tiny_qwen_copy):
    from engine.toyworld.tiny_qwen_image import TinySizes, write_transformer

    shutil.rmtree(tiny_qwen_copy / "transformer")
    write_transformer(tiny_qwen_copy / "transformer", TinySizes(text_hidden=48), seed=0)
    with pytest.raises(WeightsError) as error:
        engine.load(tiny_qwen_copy, device="cpu")
    assert str(error.value) == ("The transformer expects text features of width 48 but the text encoder gives 32. "
                                "The components come from different models.")


def test_header_reading_reports_sizes_without_loading(tiny_qwen_dir):
    header = read_header(tiny_qwen_dir / "vae" / "diffusion_pytorch_model.safetensors")
    assert header.nbytes == sum(t.nbytes for t in header.tensors) > 0
    assert all(t.dtype == "F32" for t in header.tensors)


@pytest.mark.parametrize(("content", "problem"), [
    (b"\x01\x02", "is not a safetensors file: it is only 2 bytes long."),
    (b"\xff" * 8 + b"{}", "is not a valid safetensors file (damaged header)."),
    ((5).to_bytes(8, "little") + b"{nope", "is not a valid safetensors file (damaged header)."),
])
def test_error_raised_if_file_is_not_safetensors(tmp_path, content, problem):
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    with pytest.raises(WeightsError) as error:
        read_header(path)
    assert str(error.value) == (f"{path} {problem} Download the file again, or delete it so that the next download "
                                "fetches it.")
