"""The scorer's matching and tallies, judged on clean renders (a perfect model) and on made-up detections."""

from __future__ import annotations

import numpy as np
import pytest

from engine.toyworld.captions import canonical_caption
from engine.toyworld.detector import detect
from engine.toyworld.recipe import HELD_OUT_FIRST_SEED
from engine.toyworld.scene import Scene, SceneShape
from engine.toyworld.score import Unit, held_out_scenes, mask_iou, match_shapes, score_model
from engine.toyworld.vocabulary import Color, Position, Shape, Size
from engine.toyworld.world import make_sample, render


class _Renderer:
    """Stands in for a Model: draws exactly the scene its prompt names, as a perfect model would."""

    class preset:
        class defaults:
            width = 128
            steps = 20
            cfg = 4.0

    def __init__(self, count: int):
        self.by_prompt = {canonical_caption(scene): scene for scene in held_out_scenes(count)}

    def generate(self, prompt, **settings):
        class Result:
            images = [render(self.by_prompt[prompt])]

        return Result()


def test_perfect_pictures_score_full_marks():
    report = score_model(_Renderer(12), prompts=12, seeds=1)
    for metric in report.metrics:
        if metric.unit is not Unit.SECONDS:
            assert metric.value == pytest.approx(1.0), metric.name
    assert "color of the described shape" in report.table()


def test_held_out_scenes_come_from_seeds_no_training_run_uses():
    assert held_out_scenes(3)[0] == make_sample(HELD_OUT_FIRST_SEED).scene


def test_a_shape_in_the_wrong_cell_counts_against_position_only():
    wanted = SceneShape(Shape.CIRCLE, Color.RED, Size.LARGE, Position.TOP_LEFT)
    drawn = Scene(Color.BLUE, (SceneShape(Shape.CIRCLE, Color.RED, Size.LARGE, Position.TOP),))
    [matched] = match_shapes((wanted,), detect(render(drawn)).shapes, 128)
    assert (matched.color, matched.shape, matched.position) == (Color.RED, Shape.CIRCLE, Position.TOP)


def test_each_detected_shape_is_matched_to_one_description_only():
    described = (SceneShape(Shape.CIRCLE, Color.RED, Size.LARGE, Position.TOP_LEFT),
                 SceneShape(Shape.SQUARE, Color.GREEN, Size.LARGE, Position.TOP))
    drawn = Scene(Color.BLUE, (SceneShape(Shape.SQUARE, Color.GREEN, Size.LARGE, Position.TOP),))
    matched = match_shapes(described, detect(render(drawn)).shapes, 128)
    assert matched[0] is None and matched[1].color == Color.GREEN


def test_mask_iou_is_one_for_a_clean_render_and_zero_when_the_shape_is_gone():
    sample = make_sample(HELD_OUT_FIRST_SEED)
    assert mask_iou(sample.scene, sample.masks, detect(sample.image)) == [1.0] * len(sample.masks)
    blank = np.zeros((128, 128, 3), dtype=np.uint8)
    assert mask_iou(sample.scene, sample.masks, detect(blank)) == [0.0] * len(sample.masks)


def test_a_candidate_folder_is_scored_at_the_tiny_shapes_settings(tmp_path):
    from engine.presets import load_preset
    from engine.toyworld.__main__ import shapes_preset

    shipped = load_preset("tiny-shapes")
    candidate = shapes_preset(str(tmp_path))
    assert candidate.folder == tmp_path.resolve()
    assert candidate.defaults == shipped.defaults and candidate.defaults.width == 128
    assert shapes_preset("tiny-shapes") == shipped


def test_the_breakdown_says_which_class_was_read_as_what():
    """A square drawn round, in its cell, counts against the square's class only; a missing triangle against
    all three shares of its groups; the read-as counts name both."""
    from engine.toyworld.score import _Tally

    square = SceneShape(Shape.SQUARE, Color.RED, Size.LARGE, Position.TOP_LEFT)
    triangle = SceneShape(Shape.TRIANGLE, Color.GREEN, Size.SMALL, Position.BOTTOM_RIGHT)
    drawn = Scene(Color.BLUE, (SceneShape(Shape.CIRCLE, Color.RED, Size.LARGE, Position.TOP_LEFT),))
    tally = _Tally()
    tally.add(Scene(Color.BLUE, (square, triangle)), detect(render(drawn)))
    assert tally.groups["class: square"] == [1, 1, 0, 1]
    assert tally.groups["class: triangle"] == [1, 0, 0, 0]
    assert tally.groups["shapes in the prompt: 2"] == [2, 1, 0, 1]
    assert tally.groups["size: small"] == [1, 0, 0, 0]
    assert tally.read_as == {("square", "circle"): 1, ("triangle", "missing"): 1}


def test_the_breakdown_table_lists_every_group_and_the_read_as_shares():
    report = score_model(_Renderer(6), prompts=6, seeds=1, img2img=0)
    table = report.breakdown_table()
    assert {group.group for group in report.groups} >= {"class: circle", "size: large"}
    for group in report.groups:
        assert group.group in table
        assert (group.color, group.shape, group.position) == (1.0, 1.0, 1.0)
    described = {want for want, _, _ in report.read_as}
    for want in described:
        total = sum(count for w, _, count in report.read_as if w == want)
        assert f"  {want} (n={total}): {want} 100%" in table
