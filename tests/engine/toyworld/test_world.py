import numpy as np
import pytest

from engine.toyworld.scene import Scene, SceneShape, cell_of
from engine.toyworld.vocabulary import COLOR_RGB, Color, Position, Shape, Size
from engine.toyworld.world import make_sample, render, sample_scene, shape_masks

ALL_SHAPES = tuple(Shape)


def test_same_pixels_and_caption_when_the_seed_is_the_same():
    first, second = make_sample(7, shapes=ALL_SHAPES), make_sample(7, shapes=ALL_SHAPES)
    assert np.array_equal(np.asarray(first.image), np.asarray(second.image))
    assert first.caption == second.caption
    assert first.scene == second.scene
    assert np.array_equal(np.asarray(render(sample_scene(7, shapes=ALL_SHAPES))), np.asarray(first.image))


def test_images_differ_when_seeds_differ():
    images = [np.asarray(make_sample(seed).image).tobytes() for seed in range(20)]
    assert len(set(images)) == 20


def test_sample_scene_matches_make_sample_when_given_the_same_arguments():
    assert sample_scene(11, size=96) == make_sample(11, size=96).scene


def test_star_never_appears_when_shapes_are_left_at_default():
    shapes = {s.shape for seed in range(3000) for s in sample_scene(seed).shapes}
    assert shapes == {Shape.CIRCLE, Shape.SQUARE, Shape.TRIANGLE}


def test_only_stars_appear_when_asked_for_stars():
    shapes = {s.shape for seed in range(50) for s in sample_scene(seed, shapes=("star",)).shapes}
    assert shapes == {Shape.STAR}


def test_scenes_cover_the_vocabulary_when_sampled_many_times():
    scenes = [sample_scene(seed, shapes=ALL_SHAPES) for seed in range(500)]
    shapes = [s for scene in scenes for s in scene.shapes]
    assert {len(scene.shapes) for scene in scenes} == {1, 2, 3}
    assert {s.position for s in shapes} == set(Position)
    assert {s.color for s in shapes} == set(Color)
    assert {s.size for s in shapes} == set(Size)
    assert {scene.background for scene in scenes} == set(Color)


def test_error_raised_if_an_unknown_shape_is_asked_for():
    with pytest.raises(ValueError, match="unknown shape 'hexagon'"):
        sample_scene(0, shapes=("circle", "hexagon"))


def test_masks_are_exactly_the_pixels_of_each_shape_when_rendered():
    for seed in range(100):
        sample = make_sample(seed, shapes=ALL_SHAPES)
        pixels = np.asarray(sample.image)
        assert pixels.shape == (128, 128, 3) and sample.image.mode == "RGB"
        covered = np.zeros((128, 128), dtype=bool)
        for shape, mask in zip(sample.scene.shapes, sample.masks):
            assert mask.dtype == bool and mask.shape == (128, 128)
            assert not (mask & covered).any()
            assert (pixels[mask] == COLOR_RGB[shape.color]).all()
            covered |= mask
        assert (pixels[~covered] == COLOR_RGB[sample.scene.background]).all()


def test_each_shape_lies_in_its_own_cell_without_touching_the_border_when_rendered():
    for seed in range(200):
        scene = sample_scene(seed, shapes=ALL_SHAPES)
        for shape, mask in zip(scene.shapes, shape_masks(scene)):
            ys, xs = np.nonzero(mask)
            assert xs.min() > 0 and ys.min() > 0 and xs.max() < 127 and ys.max() < 127
            corners = {cell_of(x + 0.5, y + 0.5, 128) for x, y in ((xs.min(), ys.min()), (xs.max(), ys.max()))}
            assert corners == {shape.position}


def test_shapes_are_recognisably_sized_when_small_and_large():
    scene = Scene(
        Color.BLACK,
        (
            SceneShape(Shape.SQUARE, Color.RED, Size.SMALL, Position.TOP_LEFT),
            SceneShape(Shape.SQUARE, Color.RED, Size.LARGE, Position.BOTTOM_RIGHT),
        ),
    )
    small, large = (int(np.sqrt(m.sum())) for m in shape_masks(scene))
    assert small == pytest.approx(128 / 6, abs=1.5)
    assert large == pytest.approx(128 / 3.5, abs=1.5)


def test_entity_captions_describe_each_shape_when_a_sample_is_made():
    sample = make_sample(3, shapes=ALL_SHAPES)
    assert len(sample.entity_captions) == len(sample.masks) == len(sample.scene.shapes)
    for shape, text in zip(sample.scene.shapes, sample.entity_captions):
        assert text.endswith(f"{shape.color.value} {shape.shape.value} {shape.position.value}")


def test_captions_and_grid_helpers_are_importable_when_taken_from_world():
    from engine.toyworld import world

    scene = world.sample_scene(4)
    assert world.parse_caption(world.canonical_caption(scene)).background == scene.background
    assert world.cell_of(1, 1, 128) is Position.TOP_LEFT
