"""Put a VramPlan into effect for a Qwen-Image model: build its networks on the meta device, place every weight
straight from the safetensors files where the plan says (device, RAM copy, or left on disk), hook up phases
and streaming; and move to another plan in place when memory runs short.

Nothing is loaded twice and nothing the plan keeps on disk is ever read at load time, so loading itself stays
within the plan's budget.
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass, replace

import torch

from engine.errors import WeightsError
from engine.loading import (QwenImageModules, build_diffusers_module, build_text_encoder, check_fit,
                            check_qwen_image_fits, load_schedule, load_tokenizer, weight_files)
from engine.presets import Preset, Role
from engine.sources import ResolvedComponent
from engine.vram.disk import DiskReader, TensorLocation, tensor_locations
from engine.vram import planner
from engine.vram.planner import Budget, VramPlan
from engine.vram.residency import Residency
from engine.vram.runtime import ComponentRuntime
from engine.vram.sizes import WEIGHT_ROLES, ModelSizes, sizes_for_folders
from engine.vram.vocabulary import Compute, Mode
from engine.vram.workload import Workload

logger = logging.getLogger(__name__)


@dataclass
class PlannedModel:
    """A Qwen-Image model loaded under a plan, with what it takes to move it to another plan."""

    components: dict[Role, ResolvedComponent]
    sizes: ModelSizes
    plan: VramPlan
    modules: QwenImageModules
    residency: Residency
    reader: DiskReader

    def release(self) -> None:
        """Give back the memory a failed run held: park what may be parked, empty the allocator's cache."""
        self.residency.release()
        gc.collect()
        if self.modules.device.type == "cuda":
            torch.cuda.empty_cache()

    def move_to(self, plan: VramPlan) -> None:
        """Switch to `plan` in place: components keep their copies where they can; a component whose storage
        precision or compute device changes is built again from its files."""
        old, self.plan = self.plan, plan
        self.residency.unhook()
        networks = {}
        for role in (Role.TEXT_ENCODER, Role.TRANSFORMER, Role.VAE):
            runtime, before, after = self.residency.runtimes[role], old.component(role), plan.component(role)
            if before.precision is after.precision and before.compute is after.compute:
                runtime.apply(after)
                networks[role] = runtime
            else:
                runtime.close()
                module, locations = _build(role, self.components[role], self.modules.dtype)
                networks[role] = _place(role, module, locations, plan, self.modules.device, self.modules.dtype,
                                        self.reader)
        self.modules = replace(self.modules, text_encoder=networks[Role.TEXT_ENCODER].module,
                               transformer=networks[Role.TRANSFORMER].module, vae=networks[Role.VAE].module,
                               text_encoder_device=_encoder_device(plan))
        _set_tiling(self.modules.vae, plan)
        self.residency = Residency(networks, _entries(self.modules))

    def close(self) -> None:
        self.residency.detach()
        self.reader.close()


def load_planned(preset: Preset, components: dict[Role, ResolvedComponent], device: torch.device,
                 dtype: torch.dtype, budget: Budget, mode: Mode = Mode.AUTO) -> PlannedModel:
    """Plan for the preset's default workload within `budget` (sizes from the files' headers), then load."""
    sizes = sizes_for_folders(preset.family, {role: (components[role].folder, components[role].config_folder)
                                              for role in WEIGHT_ROLES})
    sizes = replace(sizes, architecture=replace(sizes.architecture, title=preset.title))
    return load_qwen_image(components, sizes, planner.plan(sizes, Workload.preset_default(preset), budget, mode),
                           device, dtype)


def load_qwen_image(components: dict[Role, ResolvedComponent], sizes: ModelSizes, plan: VramPlan,
                    device: torch.device, dtype: torch.dtype) -> PlannedModel:
    """Load every Qwen-Image component under `plan`, after checking (on meta) that they belong together."""
    tokenizer = load_tokenizer(components[Role.TOKENIZER])
    built = {role: _build(role, components[role], dtype) for role in (Role.TEXT_ENCODER, Role.TRANSFORMER, Role.VAE)}
    check_qwen_image_fits(components, tokenizer, built[Role.TEXT_ENCODER][0], built[Role.TRANSFORMER][0],
                          built[Role.VAE][0])
    reader = DiskReader()
    runtimes = {role: _place(role, module, locations, plan, device, dtype, reader)
                for role, (module, locations) in built.items()}
    modules = QwenImageModules(
        transformer=runtimes[Role.TRANSFORMER].module, vae=runtimes[Role.VAE].module,
        text_encoder=runtimes[Role.TEXT_ENCODER].module, tokenizer=tokenizer, schedule=load_schedule(components),
        device=device, dtype=dtype, text_encoder_device=_encoder_device(plan))
    _set_tiling(modules.vae, plan)
    residency = Residency(runtimes, _entries(modules))
    logger.info("%s", plan.explanation)
    return PlannedModel(components, sizes, plan, modules, residency, reader)


def _build(role: Role, component: ResolvedComponent, dtype: torch.dtype
           ) -> tuple[torch.nn.Module, dict[str, TensorLocation]]:
    """A component's network on the meta device and where each of its tensors is in its files."""
    from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel

    if role is Role.TEXT_ENCODER:
        module, checkpoint_names = build_text_encoder(component, dtype)
        files = weight_files(component.folder, "model")
    else:
        model_class = QwenImageTransformer2DModel if role is Role.TRANSFORMER else AutoencoderKLQwenImage
        module, files = build_diffusers_module(model_class, component)
        checkpoint_names = {name: name for name in module.state_dict()}
    return module.eval().requires_grad_(False), _locations(module, component, files, checkpoint_names)


def _place(role: Role, module: torch.nn.Module, locations: dict[str, TensorLocation], plan: VramPlan,
           device: torch.device, dtype: torch.dtype, reader: DiskReader) -> ComponentRuntime:
    part = plan.component(role)
    runtime = ComponentRuntime(role, module, locations, torch.device("cpu") if part.compute is Compute.CPU else device,
                               dtype, part.precision, part.blocks, reader)
    runtime.apply(part)
    return runtime


def _locations(module: torch.nn.Module, component: ResolvedComponent, files: list,
               checkpoint_names: dict[str, str]) -> dict[str, TensorLocation]:
    """Each state-dict tensor's place in the files, every shape checked; the loader's errors when they differ."""
    stored = tensor_locations(files)
    state = module.state_dict()
    missing = sorted(name for name in state if checkpoint_names.get(name) not in stored)
    used = {checkpoint_names[name] for name in state if name not in missing}
    check_fit(module, component, missing, sorted(set(stored) - used))
    buffers = sorted(set(state) - {name for name, _ in module.named_parameters()})
    if buffers:
        raise WeightsError(f"{component.folder}: {buffers[0]} is a stored buffer, which plans do not place yet.")
    locations = {}
    for name, tensor in state.items():
        location = stored[checkpoint_names[name]]
        if tuple(tensor.shape) != location.shape:
            raise WeightsError(
                f"{location.path} does not fit the model's config: size mismatch for {name}: the file has "
                f"{list(location.shape)}, the config makes {list(tensor.shape)}.",
                "The config and the weights come from different models; download them again.")
        locations[name] = location
    return locations


def _encoder_device(plan: VramPlan) -> torch.device | None:
    return torch.device("cpu") if plan.component(Role.TEXT_ENCODER).compute is Compute.CPU else None


def _entries(modules: QwenImageModules) -> dict[Role, list[torch.nn.Module]]:
    """The modules whose forward starts each component's phase."""
    vae = modules.vae
    return {Role.TEXT_ENCODER: [modules.text_encoder], Role.TRANSFORMER: [modules.transformer],
            Role.VAE: [vae.encoder, vae.quant_conv, vae.post_quant_conv, vae.decoder]}


def _set_tiling(vae: torch.nn.Module, plan: VramPlan) -> None:
    if plan.component(Role.VAE).tiled:
        vae.enable_tiling()
    else:
        vae.disable_tiling()
