"""The studio in a real browser: Debian's chromium driven by playwright, against a studio on a free port."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from engine.metadata import parameters_for, save_png
from engine.settings import GenerateSettings
from tests.studio.conftest import TINY, free_port

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        missing = "Debian's chromium is not at /usr/bin/chromium (apt-get install chromium; .ci/run installs it)"
        if os.environ.get("STUDIO_REQUIRE_BROWSER") == "1":  # CI: a browser test that cannot run is a failure
            pytest.fail(missing)
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture()
def page(browser, studio):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(studio.url)
    page.wait_for_selector("#t2i-prompt textarea")
    page.wait_for_function("document.querySelector('#studio-system').innerText.includes('RAM')")  # page load done
    yield page
    context.close()


def set_number(page, elem_id: str, value) -> None:
    """Type into a slider's or number field's box and commit, as a user does."""
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def progress_text(page) -> str:
    return page.inner_text("#t2i-progress")


def test_typing_a_prompt_and_clicking_generate_shows_the_image_in_the_gallery(page, studio):
    before = studio.saved()
    page.fill("#t2i-prompt textarea", "a red circle in the top left on a blue background")
    page.click("#t2i-generate")
    page.wait_for_selector("#t2i-gallery img")
    page.wait_for_function("document.querySelector('#t2i-progress').innerText.includes('Done')")
    assert len(studio.saved() - before) == 1
    assert "seed" in page.inner_text("#t2i-info")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "text_to_image.png"), full_page=True)


def test_an_invalid_request_shows_a_readable_message(page):
    page.fill("#t2i-prompt textarea", "")
    page.click("#t2i-generate")
    toast = page.get_by_text("The prompt is empty. Describe the image you want.").first
    toast.wait_for()
    page.wait_for_function("document.querySelector('#t2i-progress').innerText.includes('The prompt is empty')")


def drop_file(page, selector: str, path: Path) -> None:
    """Drop a file on an element the way a browser does when one is dragged from the desktop."""
    data = base64.b64encode(path.read_bytes()).decode()
    page.eval_on_selector(selector, """(target, [data, name]) => {
        const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], name, {type: "image/png"}));
        for (const type of ["dragenter", "dragover", "drop"]) {
            target.dispatchEvent(new DragEvent(type, {dataTransfer: transfer, bubbles: true, cancelable: true}));
        }
    }""", [data, path.name])


@pytest.mark.parametrize("target", ["#t2i-restore button[aria-dropeffect]", "#t2i-current"],
                         ids=["on-the-restore-box", "anywhere-on-the-page"])
def test_dropping_a_saved_png_fills_every_field(page, tmp_path, target):
    settings = GenerateSettings(prompt="a yellow triangle on the right", negative_prompt="green", width=96,
                                height=64, steps=7, cfg=2.5, seed=1234)
    from PIL import Image

    png = save_png(Image.new("RGB", (96, 64), "yellow"), tmp_path / "made-by-the-studio.png",
                   parameters_for(settings, TINY, settings.seed))
    drop_file(page, target, png)
    page.wait_for_function("document.querySelector('#t2i-prompt textarea').value.includes('yellow triangle')")
    page.wait_for_function("document.querySelector('#t2i-seed input').value === '1234'")
    values = {name: page.input_value(f"#t2i-{name} input[type=number]") for name in ("width", "height", "steps", "cfg")}
    assert values == {"width": "96", "height": "64", "steps": "7", "cfg": "2.5"}
    assert page.input_value("#t2i-negative textarea") == "green"
    assert page.locator("#t2i-size input[value='96x64']").is_checked()


def test_cancel_stops_the_run_and_the_next_one_works(page, studio, slow_steps):
    before = studio.saved()
    page.fill("#t2i-prompt textarea", "a slow big picture")
    for name, value in (("width", 256), ("height", 256), ("steps", 100), ("count", 2)):
        set_number(page, f"t2i-{name}", value)
    page.click("#t2i-generate")
    page.wait_for_function("document.querySelector('#t2i-progress').innerText.includes('Step')")
    started = time.perf_counter()
    page.click("#t2i-cancel")
    page.wait_for_function("document.querySelector('#t2i-progress').innerText.includes('Cancelled')")
    assert time.perf_counter() - started < 30  # within a step: timed in test_jobs; here, busy CI gets slack
    assert studio.saved() == before
    for name, value in (("width", 64), ("height", 64), ("steps", 2), ("count", 1)):
        set_number(page, f"t2i-{name}", value)
    page.click("#t2i-generate")
    page.wait_for_function("document.querySelector('#t2i-progress').innerText.includes('Done')")
    assert len(studio.saved() - before) == 1


def test_a_second_user_waits_in_the_queue_sees_the_position_and_gets_the_image(browser, page, studio, slow_steps):
    page.fill("#t2i-prompt textarea", "the first user's slow picture")
    for name, value in (("width", 256), ("height", 256), ("steps", 100)):
        set_number(page, f"t2i-{name}", value)
    other = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    other.set_default_timeout(TIMEOUT_MS)
    other.goto(studio.url)
    other.fill("#t2i-prompt textarea", "the second user's picture")
    page.click("#t2i-generate")
    page.wait_for_function("document.querySelector('#t2i-progress').innerText.includes('Step')")
    other.click("#t2i-generate")
    other.wait_for_function("document.querySelector('#t2i-gallery').innerText.includes('queue: 1/1')")
    page.click("#t2i-cancel")
    other.wait_for_function("document.querySelector('#t2i-progress').innerText.includes('Done')")
    assert "the second user's picture" not in page.inner_text("#t2i-info")
    other.context.close()


def test_history_shows_past_results_and_restores_one_into_text_to_image(page, studio):
    from gradio_client import Client

    Client(studio.url, verbose=False).predict(TINY, "a purple moon from history", " ", 64, 96, 3, 2.0, 4242, 1, None,
                                              0.6, api_name="/generate")
    page.get_by_role("tab", name="History").click()
    page.locator("#history-gallery img").first.click()
    page.wait_for_function("document.querySelector('#history-info').innerText.includes('seed 4242')")
    page.click("#history-restore")
    page.wait_for_function("document.querySelector('#t2i-prompt textarea').value === 'a purple moon from history'")
    assert page.get_by_role("tab", name="Text to Image").get_attribute("aria-selected") == "true"
    assert page.input_value("#t2i-seed input") == "4242"
    assert page.input_value("#t2i-height input[type=number]") == "96"


def test_a_fresh_studio_makes_its_first_image_right_after_the_page_loads(browser, tmp_path):
    """python app.py in a new process, as a user starts it, on the shipped presets: it opens on tiny-shapes, and
    torch, diffusers and the model all load for this click.

    Also writes the two figures the studio is judged by to test-artifacts/figures.json.
    """
    port = free_port()
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "app.py", "--port", str(port), "--models-dir", str(tmp_path / "models"),
         "--outputs-dir", str(tmp_path / "outputs")],
        cwd=Path(__file__).resolve().parents[2], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/"
        while True:
            assert process.poll() is None and time.perf_counter() - started < 60, "the studio did not start"
            try:
                urllib.request.urlopen(url, timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        answered = time.perf_counter() - started
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(url)
        page.wait_for_selector("#t2i-preset input")
        assert page.input_value("#t2i-preset input") == "Tiny shapes (offline)"  # it opens on the shipped default
        page.fill("#t2i-prompt textarea", "a red circle in the top left on a blue background")
        clicked = time.perf_counter()
        page.click("#t2i-generate")
        page.wait_for_selector("#t2i-gallery img")
        first_image = time.perf_counter() - clicked
        assert "Done" in progress_text(page)
        page.close()
    finally:
        process.terminate()
        process.wait(10)
    ARTIFACTS.mkdir(exist_ok=True)
    figures = {"seconds_from_start_to_page_answering": round(answered, 2),
               "seconds_from_click_to_first_image": round(first_image, 2),
               "model": "tiny-shapes (shipped), 128x128, 20 steps, cfg 2.5, on this machine's CPU"}
    (ARTIFACTS / "figures.json").write_text(json.dumps(figures, indent=1))
