"""The System panel's VRAM plan: the plan for the chosen preset and settings before Generate (each made once),
why there is none (missing files, a size beyond the model, a model that cannot fit), and the plan a run used."""

from __future__ import annotations

import shutil

import pytest
from gradio_client import Client

from engine.settings import GenerateSettings
from engine.vram import planner
from engine.vram import preset_plan as preset_plan_module
from engine.vram.preset_plan import plan_for_preset
from studio.config import StudioConfig
from studio.services import Services
from studio.system import PlanCache, plan_before, plan_used
from studio.tabs.text_to_image import plan_panel
from tests.engine.vram.test_fallback import FailingTransformer
from tests.studio.conftest import TINY, TINY_PRESET

EIGHT_GB_CPU = planner.Budget.cpu(8)


@pytest.fixture()
def services(studio_presets, tmp_path) -> Services:
    return Services.from_config(StudioConfig(presets_dir=studio_presets, models_dir=tmp_path / "models",
                                             outputs_dir=tmp_path / "outputs", preset=TINY))


@pytest.fixture()
def budgets(monkeypatch) -> list[object]:
    """The machine replaced by a CPU with 8 GB of RAM (the panel's text then reads the same everywhere); the
    list records each time the machine was asked, which is each time a plan was made."""
    asked = []

    def machine_budget(device=None, *args, **kwargs):
        asked.append(device)
        return EIGHT_GB_CPU

    monkeypatch.setattr(preset_plan_module, "machine_budget", machine_budget)
    return asked


def tiny_panel(services: Services, plans: PlanCache, width=64, height=64, count=1, cfg=4.0) -> str:
    preset = services.catalog.get(TINY)
    return plan_before(plans, preset, services.catalog.availability(preset), width, height, count, cfg)


def test_the_panel_shows_the_plan_the_engine_makes_for_the_preset_and_settings(services, budgets):
    plans = PlanCache(services.config.models_dir)
    text = tiny_panel(services, plans, width=96, height=64, count=2, cfg=3.0)
    expected = plan_for_preset(services.catalog.get(TINY), GenerateSettings("any", width=96, height=64, count=2,
                                                                            cfg=3.0),
                               budget=EIGHT_GB_CPU, models_dir=services.config.models_dir)
    assert text == f"**Plan for** {expected.explanation}"
    assert text.startswith("**Plan for** Tiny test model at 96x64, batch 2 on the CPU with 8 GB RAM: transformer in "
                           "RAM in float32; text encoder in RAM; VAE whole; peak ~")


def test_each_plan_is_made_once_per_preset_size_count_and_guidance(services, budgets):
    plans = PlanCache(services.config.models_dir, device="cpu")
    first = tiny_panel(services, plans)
    assert tiny_panel(services, plans) == first and tiny_panel(services, plans, cfg=2.5) == first
    assert budgets == ["cpu"]  # CFG 2.5 guides like 4: the same workload
    assert "batch" not in tiny_panel(services, plans, cfg=1.0)
    assert ", batch 2 " in tiny_panel(services, plans, count=2)
    assert " at 96x64 " in tiny_panel(services, plans, width=100)  # rounded as the engine rounds it
    assert len(budgets) == 4


def test_guidance_on_and_off_are_planned_apart(services):
    preset = services.catalog.get(TINY)
    plans = PlanCache(services.config.models_dir)
    guided = plans.plan(preset, GenerateSettings("any", width=64, height=64, cfg=4.0))
    plain = plans.plan(preset, GenerateSettings("any", width=64, height=64, cfg=1.0))
    assert guided.workload.cfg and not plain.workload.cfg


def test_a_preset_without_its_files_says_so_instead_of_a_plan(services, studio_presets, tmp_path, budgets):
    plans = PlanCache(services.config.models_dir)
    qwen = services.catalog.get("qwen-image")
    assert plan_before(plans, qwen, services.catalog.availability(qwen), 1328, 1328, 1, 4.0) == (
        "**No plan for Qwen-Image**: its model files are not here (they are not downloaded yet; the Models tab "
        "downloads them).")
    presets = shutil.copytree(studio_presets, tmp_path / "presets")
    (presets / f"{TINY}.toml").write_text(TINY_PRESET.format(name=TINY, folder="/nowhere/tiny"))
    moved = Services.from_config(StudioConfig(presets_dir=presets, models_dir=tmp_path / "models"))
    assert tiny_panel(moved, plans) == (
        "**No plan for Tiny test model**: its model files are not here (they are missing from `/nowhere/tiny`; the "
        "Models tab lists what is missing).")
    assert budgets == []  # nothing planned, nothing probed


def test_a_size_beyond_the_model_says_why_there_is_no_plan(services, budgets):
    assert tiny_panel(services, PlanCache(services.config.models_dir), width=512) == (
        "**No plan for Tiny test model at 512x64**: width 512 is above Tiny test model's limit of 256 pixels. "
        "Use at most 256.")


def test_a_model_that_cannot_fit_the_machine_says_so(services, monkeypatch):
    starved = planner.Budget.cpu(0.5)
    monkeypatch.setattr(preset_plan_module, "machine_budget", lambda *args, **kwargs: starved)
    with pytest.raises(planner.PlanError) as refused:
        plan_for_preset(services.catalog.get(TINY), GenerateSettings("any", width=64, height=64), budget=starved,
                        models_dir=services.config.models_dir)
    assert tiny_panel(services, PlanCache(services.config.models_dir)) == (
        f"**No plan for Tiny test model at 64x64**: {refused.value}")


def test_the_handler_finds_the_preset_by_name_and_names_an_unknown_one(services, budgets):
    plans = PlanCache(services.config.models_dir)
    assert plan_panel(services, plans, TINY, 64, 64, 1, 4.0) == tiny_panel(services, plans)
    assert plan_panel(services, plans, "nope", 64, 64, 1, 4.0) == (
        "Unknown preset 'nope'. Known presets: qwen-image, tiny-test.")
    assert plan_panel(services, plans, None, 64, 64, 1, 4.0) == ""


def test_after_an_out_of_memory_retry_the_panel_shows_the_plan_used_and_what_changed(tiny_qwen_dir):
    import engine

    model = engine.load(tiny_qwen_dir, device="cpu")  # its own: the retry leaves it with a smaller plan
    before = model.plan
    with FailingTransformer(times=1):
        result = model.generate("a red circle", width=64, height=64, steps=2, cfg=3.0, seed=3)
    [retry] = result.notes
    assert retry.startswith("Out of memory; retried with a smaller plan: budget ")
    assert result.plan.budget.device_bytes < before.budget.device_bytes
    assert plan_used(result.plan, result.notes) == f"**Used:** {result.plan.explanation}  \n{retry}"


def test_without_a_plan_the_panel_is_left_as_it_is():
    assert plan_used(None, ["width 100 was rounded to 96 (a multiple of 16)."]) == ""


def test_the_plan_endpoint_answers_for_the_form_of_the_running_studio(studio):
    text = Client(studio.url, verbose=False).predict(TINY, 64, 96, 1, 4.0, api_name="/plan")
    assert text.startswith("**Plan for** Tiny test model at 64x96 on ")
