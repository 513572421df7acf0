"""Meaning checks on the shipped tiny-shapes model: the detector reads what it draws.

These load presets/tiny-shapes exactly as a user's first `python -m engine generate` does (no preset named).
The full score (60 prompts x 2 seeds) is `python -m engine.toyworld score`; here a smaller sample of it runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import engine
from engine.toyworld.detector import detect
from engine.toyworld.recipe import SHIPPED
from engine.toyworld.score import score_model
from engine.toyworld.vocabulary import Color, Position, Shape

README_PROMPT = "a red circle in the top left on a blue background"
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def shipped():
    return engine.load(device="cpu")


def _red_circle_top_left_on_blue(image) -> bool:
    found = detect(image)
    return found.background == Color.BLUE and any(
        (shape.color, shape.shape, shape.position) == (Color.RED, Shape.CIRCLE, Position.TOP_LEFT)
        for shape in found.shapes)


def test_the_default_preset_is_the_shipped_tiny_shapes(shipped):
    assert shipped.preset.name == "tiny-shapes"
    assert shipped.preset.defaults.width == 128 and shipped.preset.defaults.steps == 20


def test_the_shipped_scheduler_is_the_one_the_recipe_trained_with():
    shipped_config = json.loads((ROOT / "presets" / "tiny-shapes" / "scheduler" / "scheduler_config.json").read_text())
    assert shipped_config == SHIPPED.scheduler_config()


def test_the_readme_prompt_draws_a_red_circle_top_left_on_blue(shipped):
    images = shipped.generate(README_PROMPT, seed=0, count=4).images
    assert sum(_red_circle_top_left_on_blue(image) for image in images) >= 3


def test_the_cli_with_no_preset_named_draws_the_prompt(tmp_path):
    out = tmp_path / "x.png"
    done = subprocess.run([sys.executable, "-m", "engine", "generate", "--prompt", README_PROMPT, "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    from PIL import Image

    with Image.open(out) as image:
        assert image.size == (128, 128)
        assert _red_circle_top_left_on_blue(image.convert("RGB"))


# The targets the shipped model meets with room to spare on the full score (background 100%, position 95%,
# img2img IoU 0.88; this sample: 100%, 92%, 0.81). Color (93%) and two-shape prompts (71%) meet theirs on the full
# score too, but this sample's 25 shapes and 3 two-shape prompts sit too near the line to judge them; shape class
# (67%) is still below its target, so issue 3 stays open.
KEPT = ("background color", "position (centroid in the named cell)", "img2img at 0.3: mask IoU (mean)")


def test_a_small_sample_of_the_score_keeps_backgrounds_positions_and_img2img_shapes(shipped):
    report = score_model(shipped, prompts=12, seeds=1, img2img=6)
    missed = [(report.metric(name).name, report.metric(name).value) for name in KEPT if not report.metric(name).met]
    assert missed == [], report.table()
