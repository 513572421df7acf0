import random

import pytest

from engine.toyworld.captions import (
    ParsedShape, canonical_caption, caption, entity_caption, parse_caption,
)
from engine.toyworld.scene import Scene, SceneShape
from engine.toyworld.vocabulary import Color, Position, Shape, Size
from engine.toyworld.world import sample_scene

SCENE = Scene(
    Color.BLUE,
    (
        SceneShape(Shape.CIRCLE, Color.RED, Size.LARGE, Position.TOP_LEFT),
        SceneShape(Shape.SQUARE, Color.GREEN, Size.SMALL, Position.BOTTOM),
    ),
)


def test_canonical_caption_reads_word_for_word_when_the_scene_is_hand_built():
    assert canonical_caption(SCENE) == (
        "a large red circle in the top left and a small green square at the bottom on a blue background"
    )
    assert canonical_caption(SCENE, with_size=False) == (
        "a red circle in the top left and a green square at the bottom on a blue background"
    )


def test_article_is_an_when_the_next_word_starts_with_a_vowel():
    scene = Scene(Color.ORANGE, (SceneShape(Shape.STAR, Color.WHITE, Size.SMALL, Position.CENTER),))
    assert canonical_caption(scene) == "a small white star in the center on an orange background"
    shape = SceneShape(Shape.TRIANGLE, Color.ORANGE, Size.LARGE, Position.RIGHT)
    assert entity_caption(shape, with_size=False) == "an orange triangle on the right"


def test_captions_vary_but_name_every_shape_when_sampled_with_different_rngs():
    texts = {caption(SCENE, random.Random(seed)) for seed in range(200)}
    assert len(texts) >= 8
    assert canonical_caption(SCENE) in texts
    for text in texts:
        for word in ("red", "circle", "green", "square", "blue", "background"):
            assert word in text


def test_caption_is_the_same_when_the_rng_seed_is_the_same():
    assert caption(SCENE, random.Random(5)) == caption(SCENE, random.Random(5))


def test_parse_caption_reads_back_the_scene_when_given_its_canonical_caption():
    for seed in range(300):
        scene = sample_scene(seed, shapes=tuple(Shape))
        expected = tuple(ParsedShape(s.color, s.shape, s.size, s.position) for s in scene.shapes)
        parsed = parse_caption(canonical_caption(scene))
        assert parsed.shapes == expected and parsed.background == scene.background
        unsized = parse_caption(canonical_caption(scene, with_size=False))
        assert unsized.shapes == tuple(p._replace(size=None) for p in expected)


def test_parse_caption_tolerates_case_and_a_final_period():
    parsed = parse_caption("A Red circle in the top left on a blue background.")
    assert parsed.shapes == (ParsedShape(Color.RED, Shape.CIRCLE, None, Position.TOP_LEFT),)
    color, shape, size, position = parsed.shapes[0]
    assert (color, shape, size, position) == ("red", "circle", None, "in the top left")


@pytest.mark.parametrize(
    ("text", "word"),
    [
        ("a pink circle in the top left on a blue background", "'pink'"),
        ("a large pink circle in the top left on a blue background", "color 'pink'"),
        ("a red hexagon in the top left on a blue background", "shape 'hexagon'"),
        ("a red circle in the middle on a blue background", "position 'in the middle'"),
        ("a red circle in the top left on a teal background", "background color 'teal'"),
    ],
)
def test_error_names_the_unknown_word_when_a_caption_has_one(text, word):
    with pytest.raises(ValueError, match=word):
        parse_caption(text)


def test_error_raised_if_the_caption_lacks_a_background():
    with pytest.raises(ValueError, match="on a <color> background"):
        parse_caption("a red circle in the top left")
