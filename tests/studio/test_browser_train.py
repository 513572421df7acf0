"""The Train tab in a real browser: upload a dataset, Start, watch the loss and samples arrive, Stop.

The studio's runner is pointed at tests/studio/fake_trainer.py (the engine's file contract in milliseconds),
so the page, the timer and the child process are what is tested here; the real trainer runs in test_train_tab.
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import pytest

from tests.studio.test_browser import ARTIFACTS, browser, page  # noqa: F401 (fixtures)
from tests.studio.test_train_tab import FAKE_TRAINER, png_bytes

pytestmark = pytest.mark.browser


@pytest.fixture()
def fake_trainer(studio, monkeypatch):
    runner = studio.services.training
    monkeypatch.setattr(runner, "command", (sys.executable, str(FAKE_TRAINER), "--step-s", "0.05"))
    yield runner
    runner.shutdown(grace_s=10)  # a failed test must not leave a run going for the next one


def open_train_tab(page) -> None:
    page.get_by_role("tab", name="Train").click()
    page.wait_for_selector("#train-start")


def fill(page, elem_id: str, value) -> None:
    page.fill(f"#{elem_id} :is(textarea, input)", str(value))


def status_has(page, text: str) -> None:
    try:
        page.wait_for_function("(text) => document.querySelector('#train-status').innerText.includes(text)", arg=text)
    except Exception:
        raise AssertionError(f"waited for {text!r}; the status says {page.inner_text('#train-status')!r}, the page "
                             f"says {page.inner_text('body')[:1500]!r}") from None


def test_upload_start_watch_the_loss_and_samples_then_stop(page, studio, fake_trainer, tmp_path):
    archive = tmp_path / "stars.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for index, color in enumerate(("red", "green", "blue")):
            bundle.writestr(f"stars/{index}.png", png_bytes(color))
            bundle.writestr(f"stars/{index}.txt", f"a {color} star")
        bundle.writestr("stars/3.png", png_bytes("yellow", mode="RGBA"))  # a cut-out: transparent around
        bundle.writestr("stars/3.txt", "a yellow star")
        bundle.writestr("stars/notes.pdf", b"%PDF")
    open_train_tab(page)
    page.set_input_files("#train-zip input[type=file]", str(archive))
    page.wait_for_function("document.querySelector('#train-dataset-info').innerText.includes('4 images')")
    assert "a green star" in page.inner_text("#train-captions")
    assert page.locator("#train-thumbnails img").count() == 4
    assert "1 of them has transparency: tick Alpha mask" in page.inner_text("#train-dataset-info")
    page.check("#train-alpha-mask input")
    fill(page, "train-name", "browser-train-star")
    fill(page, "train-trigger", "zxq")
    fill(page, "train-steps", 400)
    fill(page, "train-sample-every", 5)

    page.click("#train-start")
    status_has(page, "Training 'browser-train-star'")
    page.wait_for_selector("#train-samples img")
    # The plot draws one path per line; it has points once its path has more than a start point.
    page.wait_for_function("""() => {
        const path = document.querySelector('#train-loss svg .mark-line path');
        return path && (path.getAttribute('d') || '').split('L').length > 2;
    }""")
    page.click("#train-stop")
    status_has(page, "Stopped 'browser-train-star'")
    status_has(page, "LoRA pickers")
    view = studio.services.training.view()
    assert view.name == "browser-train-star" and 0 < view.step < 400
    assert (view.out_dir.parent / "datasets").is_dir()
    run_toml = (view.out_dir / "run.toml").read_text()
    assert "zxq a red star" in run_toml  # the default sample prompt
    assert "alpha_mask = true" in run_toml
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "train.png"), full_page=True)

    # The LoRA is offered in Text to Image at once: no reload, no Refresh.
    page.get_by_role("tab", name="Text to Image").click()
    page.click("#t2i-lora button, #t2i-lora .label-wrap")  # open the accordion
    page.click("#t2i-lora-1 input")
    page.get_by_role("option", name="browser-train-star").click()
    page.wait_for_function("document.querySelector('#t2i-lora-1 input').value === 'browser-train-star'")


def test_a_crashed_run_shows_its_stderr_and_the_page_keeps_working(page, studio, fake_trainer, monkeypatch):
    monkeypatch.setattr(fake_trainer, "command", (*fake_trainer.command, "--crash-at", "4"))
    folder = Path(studio.services.config.training_dir) / "datasets" / "folder-set"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "a.png").write_bytes(png_bytes("red"))
    (folder / "a.txt").write_text("a red star")
    open_train_tab(page)
    fill(page, "train-folder", "/etc")
    page.click("#train-load")
    page.get_by_text("The folder /etc is outside the studio's training folder").first.wait_for()
    fill(page, "train-folder", "datasets/folder-set")
    page.click("#train-load")
    page.wait_for_function("document.querySelector('#train-dataset-info').innerText.includes('1 image')")
    fill(page, "train-name", "browser-crash")
    page.click("#train-start")
    status_has(page, "Failed 'browser-crash' at step 3 of 600: The trainer exited with code 1.")
    page.wait_for_function("document.querySelector('#train-failure')?.innerText.includes('out of memory')")
    page.get_by_role("tab", name="Text to Image").click()
    page.fill("#t2i-prompt textarea", "still here after the crash")
    page.click("#t2i-generate")
    page.wait_for_function("document.querySelector('#t2i-progress').innerText.includes('Done')")
