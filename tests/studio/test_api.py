"""The studio's endpoints through gradio_client, against a studio served on a free port."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from engine.metadata import read_parameters
from tests.studio.conftest import TINY


@pytest.fixture()
def client(studio):
    return Client(studio.url, verbose=False)


def generate(client: Client, prompt: str = "a red circle", **overrides):
    values = dict(preset_name=TINY, prompt=prompt, negative=" ", width=64, height=64, steps=3, cfg=4.0, seed=11,
                  count=1, input_image=None, strength=0.6)
    values.update(overrides)
    return values, client.submit(**values, api_name="/generate")


def test_generate_returns_pngs_carrying_their_settings(client, studio):
    before = studio.saved()
    _, job = generate(client, count=2, seed=11, width=96)
    progress, current, gallery, info = job.result()
    assert "Done: 2 images saved" in progress
    assert len(gallery) == 2
    for item, seed in zip(gallery, (11, 12)):
        with Image.open(item["image"]) as image:
            assert image.format == "PNG" and image.size == (96, 64)
            assert read_parameters(image) == {
                "prompt": "a red circle", "negative_prompt": " ", "width": 96, "height": 64, "steps": 3, "cfg": 4.0,
                "seed": seed, "preset": TINY, "loras": [], "engine_version": "0.1.0"}
    saved = sorted(studio.saved() - before)
    assert [path.name.split("-", 1)[1] for path in saved] == ["11.png", "12.png"]
    assert all(path.parent.parent == studio.outputs for path in saved)
    assert f"{TINY} · seed 11 · 3 steps" in info


def test_same_seed_gives_the_same_image_under_a_new_name(client):
    first = generate(client, seed=5)[1].result()[1]
    second = generate(client, seed=5)[1].result()[1]
    assert Path(first).name != Path(second).name
    assert list(Image.open(first).getdata()) == list(Image.open(second).getdata())


def test_random_seed_is_drawn_and_recorded(client):
    current = generate(client, seed=-1)[1].result()[1]
    assert read_parameters(Image.open(current))["seed"] >= 0


def test_error_raised_as_a_readable_message_if_the_prompt_is_empty(client):
    with pytest.raises(AppError, match="The prompt is empty. Describe the image you want."):
        generate(client, prompt="   ")[1].result()


def test_error_raised_as_a_readable_message_if_the_size_is_beyond_the_model(client):
    with pytest.raises(AppError, match="width 512 is above Tiny test model's limit of 256 pixels"):
        generate(client, width=512)[1].result()


def test_a_failing_job_shows_why_and_the_studio_keeps_working(client):
    with pytest.raises(AppError, match="Preset 'qwen-image' is missing .* Models tab"):
        generate(client, preset_name="qwen-image", width=256, height=256)[1].result()
    assert "Done" in generate(client)[1].result()[0]


def test_cancel_stops_a_running_job_within_a_step_and_the_worker_takes_the_next(client, studio, slow_steps):
    before = studio.saved()
    _, job = generate(client, width=256, height=256, steps=100, count=2)
    deadline = time.monotonic() + 60
    while not any("Step" in str(output[0]) for output in job.outputs()):
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.05)
    assert "Cancelled" in client.predict(api_name="/cancel")
    progress = job.result()[0]
    assert "Cancelled before the images were finished; nothing was saved." in progress
    assert studio.saved() == before
    assert "Done" in generate(client)[1].result()[0]


def test_several_users_queue_and_all_get_their_images(studio):
    clients = [Client(studio.url, verbose=False) for _ in range(3)]
    jobs = [generate(client, prompt=f"shape {index}", seed=index, steps=4)[1] for index, client in enumerate(clients)]
    results = [job.result() for job in jobs]
    prompts = [read_parameters(Image.open(result[1]))["prompt"] for result in results]
    assert prompts == ["shape 0", "shape 1", "shape 2"]


def test_image_to_image_records_its_input_and_strength(client):
    source = generate(client, seed=3)[1].result()[1]
    current = generate(client, seed=4, input_image=handle_file(source), strength=0.5)[1].result()[1]
    parameters = read_parameters(Image.open(current))
    assert parameters["strength"] == 0.5 and parameters["input_image"] == Path(source).name


def test_restore_gives_back_every_setting_of_a_saved_png(client):
    _, job = generate(client, prompt="a blue star", negative="red", width=64, height=96, steps=2, cfg=3.5, seed=77)
    png = job.result()[1]
    restored = client.predict(handle_file(png), TINY, api_name="/restore")
    # Fields whose range follows the preset come back as updates carrying their value.
    restored = [item["value"] if isinstance(item, dict) and "value" in item else item for item in restored]
    preset, _, size, width, height, steps, cfg, negative, prompt, seed, _, info = restored
    assert (preset, size, width, height, steps, cfg, negative, prompt, seed) == (
        TINY, "64x96", 64, 96, 2, 3.5, "red", "a blue star", 77)
    assert "Restored from" in info
