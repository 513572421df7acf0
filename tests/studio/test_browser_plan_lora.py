"""In a real browser: the System panel's VRAM plan before and after Generate, and the LoRA pickers of Text to Image."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from PIL import Image

from engine.metadata import parameters_for, read_parameters, save_png
from engine.settings import GenerateSettings, LoraChoice
from tests.engine.vram.test_fallback import FailingTransformer
from tests.studio.conftest import TINY
from tests.studio.test_browser import ARTIFACTS, TIMEOUT_MS, browser, drop_file, page, set_number  # noqa: F401
from tests.studio.test_lora_pickers import make_lora

pytestmark = pytest.mark.browser


def panel_shows(page, text: str) -> None:
    page.wait_for_function("text => document.querySelector('#studio-plan').innerText.includes(text)", arg=text)


def test_the_system_panel_shows_the_plan_before_generate_and_the_plan_used_after(page, studio):
    panel_shows(page, "Plan for Tiny test model at 64x64 on ")
    set_number(page, "t2i-count", 2)
    panel_shows(page, "Plan for Tiny test model at 64x64, batch 2 on ")
    assert "peak ~" in page.inner_text("#studio-plan")
    set_number(page, "t2i-count", 1)
    panel_shows(page, "Plan for Tiny test model at 64x64 on ")

    page.fill("#t2i-prompt textarea", "a red circle in the top left on a blue background")
    page.click("#t2i-generate")
    panel_shows(page, "Used: Tiny test model at 64x64 on ")
    assert "Out of memory" not in page.inner_text("#studio-plan")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "system_plan.png"), full_page=True)

    try:
        with FailingTransformer(times=1):  # the studio runs in this process: its next run meets out-of-memory
            page.click("#t2i-generate")
            panel_shows(page, "Out of memory; retried with a smaller plan: budget")
    finally:
        studio.services.worker.cache.release()  # the next test's first run loads the model again, on the full budget
    assert "Used: Tiny test model at 64x64" in page.inner_text("#studio-plan")
    set_number(page, "t2i-height", 96)  # a change of settings shows the plan for them again
    panel_shows(page, "Plan for Tiny test model at 64x96 on ")


def generate_and_wait(page, studio) -> Path:
    """Click Generate and wait for the run's image to be saved and shown; its path."""
    before = studio.saved()
    page.click("#t2i-generate")
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while not studio.saved() - before:
        assert time.monotonic() < deadline, "no image was saved"
        time.sleep(0.05)
    [saved] = studio.saved() - before
    page.wait_for_function("name => document.querySelector('#t2i-info').innerText.includes(name)", arg=saved.name)
    return saved


def test_a_picked_lora_changes_the_image_is_recorded_and_comes_back_from_the_png(page, studio, tiny_qwen_dir):
    make_lora(studio.services.config.loras_dir / "browser-star.safetensors", tiny_qwen_dir, seed=7,
              trigger_words=("zorb",))
    page.reload()  # the page lists the LoRA folder when it loads
    page.wait_for_selector("#t2i-prompt textarea")
    page.fill("#t2i-prompt textarea", "a zorb star")
    page.fill("#t2i-seed input", "31")
    page.press("#t2i-seed input", "Enter")
    plain = generate_and_wait(page, studio)

    page.click("#t2i-lora button, #t2i-lora .label-wrap")  # open the accordion
    page.click("#t2i-lora-1 input")
    page.get_by_role("option", name="browser-star").click()
    page.wait_for_function("document.querySelector('#t2i-lora-trigger-1').innerText.includes('zorb')")
    assert page.inner_text("#t2i-lora-trigger-1") == f"Trigger words: zorb · made for {TINY}"
    set_number(page, "t2i-lora-weight-1", 0.75)
    with_lora = generate_and_wait(page, studio)
    assert list(Image.open(with_lora).getdata()) != list(Image.open(plain).getdata())
    assert read_parameters(Image.open(with_lora))["loras"] == [
        {"name": "browser-star.safetensors", "weight": 0.75,
         "path": str(studio.services.config.loras_dir.resolve() / "browser-star.safetensors")}]
    assert "LoRA browser-star 0.75" in page.inner_text("#t2i-info")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "lora_pickers.png"), full_page=True)

    page.click("#t2i-lora-1 input")  # empty the picker, then get it back from the image
    page.get_by_role("option", name="None").click()
    set_number(page, "t2i-lora-weight-1", 1)
    page.wait_for_function("document.querySelector('#t2i-lora-trigger-1').innerText === ''")
    drop_file(page, "#t2i-restore button[aria-dropeffect]", with_lora)
    page.wait_for_function("document.querySelector('#t2i-lora-1 input').value === 'browser-star'")
    assert page.input_value("#t2i-lora-weight-1 input[type=number]") == "0.75"
    page.wait_for_function("document.querySelector('#t2i-lora-trigger-1').innerText.includes('zorb')")
    assert page.input_value("#t2i-seed input") == "31"


def test_restoring_a_png_whose_lora_is_gone_warns_and_restores_the_rest(page, tmp_path):
    settings = GenerateSettings(prompt="a vanished style", width=96, height=64, steps=5, seed=4321,
                                loras=[LoraChoice("/somewhere/else/vanished.safetensors", 0.6)])
    png = save_png(Image.new("RGB", (96, 64)), tmp_path / "old.png", parameters_for(settings, TINY, settings.seed))
    drop_file(page, "#t2i-restore button[aria-dropeffect]", png)
    page.get_by_text("The LoRA 'vanished.safetensors' recorded in the image is not in the LoRA folder").first.wait_for()
    page.wait_for_function("document.querySelector('#t2i-prompt textarea').value === 'a vanished style'")
    assert page.input_value("#t2i-seed input") == "4321"
    assert page.input_value("#t2i-lora-1 input") in ("", "None")
