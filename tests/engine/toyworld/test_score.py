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
