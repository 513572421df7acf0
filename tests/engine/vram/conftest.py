"""A tiny Qwen-Image with enough blocks to split (4 transformer blocks, 3 text-encoder layers + 1 vision block),
and helpers to load it under a chosen plan."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from engine.presets import preset_for_folder
from engine.sources import resolve
from engine.toyworld.tiny_qwen_image import TinySizes, build_tiny_qwen_image
from engine.vram import planner
from engine.vram.sizes import WEIGHT_ROLES, sizes_for_folders
from engine.vram.vocabulary import Placement
from engine.vram.workload import Workload

SETTINGS = dict(width=64, height=64, steps=2, cfg=3.0, seed=3)


@pytest.fixture(scope="session")
def split_dir(tmp_path_factory):
    return build_tiny_qwen_image(tmp_path_factory.mktemp("tiny-split") / "Qwen-Image",
                                 TinySizes(dit_layers=4, text_layers=3), seed=0)


@pytest.fixture(scope="session")
def split_parts(split_dir):
    """(preset, components, sizes) of the split model, sizes read from its headers."""
    preset = preset_for_folder(split_dir)
    components = resolve(preset)
    sizes = sizes_for_folders(preset.family, {role: (components[role].folder, components[role].config_folder)
                                              for role in WEIGHT_ROLES})
    return preset, components, sizes


@pytest.fixture(scope="session")
def resident_plan(split_parts):
    return planner.plan(split_parts[2], Workload(64, 64), planner.Budget.cpu(8))


def load_with(split_parts, plan):
    """An engine.Model of the split model loaded under `plan`, float32 on the CPU."""
    import engine
    from engine.pipelines.preview import LatentProjection
    from engine.vram.apply import load_qwen_image

    preset, components, sizes = split_parts
    planned = load_qwen_image(components, sizes, plan, torch.device("cpu"), torch.float32)
    return engine.Model(preset=preset, modules=planned.modules, projection=LatentProjection.wan21(), planned=planned)


def streamed(plan, role, resident, disk=0, parked=Placement.RAM, parked_disk=0, **changes):
    """`plan` with `role` partly resident, parked between phases, its other blocks streamed."""
    component = plan.component(role)
    return plan.with_component(replace(component, resident_blocks=resident, stays=False, parked_in=parked,
                                       disk_blocks=disk, parked_disk_blocks=parked_disk, **changes))


