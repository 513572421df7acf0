import time

import numpy as np
import pytest
from PIL import Image, ImageFilter

from engine.toyworld.detector import Detection, DetectorConfig, count_points, detect, label_components
from engine.toyworld.scene import Scene, SceneShape
from engine.toyworld.vocabulary import COLOR_RGB, Color, Position, Shape, Size
from engine.toyworld.world import make_sample, render

ALL_SHAPES = tuple(Shape)


def _match_rate(images_and_scenes) -> float:
    """Share of true shapes found with the right color, class and cell."""
    found = total = 0
    for image, scene in images_and_scenes:
        detection = detect(image)
        seen = {(s.color, s.shape, s.position) for s in detection.shapes}
        found += sum((s.color, s.shape, s.position) in seen for s in scene.shapes)
        total += len(scene.shapes)
    return found / total


def _noisy_and_blurred(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    blurred = np.asarray(image.filter(ImageFilter.GaussianBlur(1.0)), dtype=np.float32)
    noisy = blurred + rng.normal(0.0, 12.0, blurred.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def test_detects_at_least_98_percent_of_shapes_when_renders_are_clean():
    samples = [make_sample(seed, shapes=ALL_SHAPES) for seed in range(300)]
    assert sum(s.shape == Shape.STAR for sample in samples for s in sample.scene.shapes) > 100
    assert _match_rate((s.image, s.scene) for s in samples) >= 0.98


def test_detects_at_least_90_percent_of_shapes_when_renders_are_blurred_and_noisy():
    rng = np.random.default_rng(0)
    samples = [make_sample(seed, shapes=ALL_SHAPES) for seed in range(1000, 1200)]
    assert _match_rate((_noisy_and_blurred(s.image, rng), s.scene) for s in samples) >= 0.90


POINTS = {Shape.CIRCLE: 0, Shape.TRIANGLE: 3, Shape.SQUARE: 4, Shape.STAR: 5}


def test_points_are_counted_on_every_detected_shape_of_clean_renders():
    counted = [(shape.shape, count_points(shape.mask))
               for seed in range(200) for shape in detect(make_sample(seed, shapes=ALL_SHAPES).image).shapes]
    assert len(counted) > 300
    assert [(shape, points) for shape, points in counted if points != POINTS[shape]] == []


def test_a_two_lobed_blob_has_two_points_though_its_concavity_reads_as_a_star():
    y, x = np.mgrid[:128, :128]
    blob = ((x - 64) ** 2 + (y - 44) ** 2 < 14 ** 2) | ((x - 64) ** 2 + (y - 88) ** 2 < 14 ** 2) | (
        (abs(x - 64) < 3) & (y > 44) & (y < 88))
    image = np.where(blob[..., None], COLOR_RGB[Color.YELLOW], COLOR_RGB[Color.BLUE]).astype(np.uint8)
    (shape,) = detect(image).shapes
    assert shape.shape == Shape.STAR and count_points(shape.mask) == 2


def test_background_size_and_exact_masks_are_reported_when_renders_are_clean():
    for seed in range(60):
        sample = make_sample(seed, shapes=ALL_SHAPES)
        detection = detect(sample.image)
        assert detection.background == sample.scene.background
        assert len(detection.shapes) == len(sample.scene.shapes)
        by_cell = {d.position: d for d in detection.shapes}
        for shape, mask in zip(sample.scene.shapes, sample.masks):
            found = by_cell[shape.position]
            assert found.size == shape.size
            assert np.array_equal(found.mask, mask)
            assert found.area == int(mask.sum())
            ys, xs = np.nonzero(mask)
            assert found.bbox == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            assert found.center == pytest.approx((xs.mean() + 0.5, ys.mean() + 0.5))


def test_shapes_are_listed_largest_first():
    detection = detect(make_sample(9, shapes=ALL_SHAPES).image)
    areas = [s.area for s in detection.shapes]
    assert areas == sorted(areas, reverse=True)


def test_no_shapes_are_found_when_the_image_is_one_color():
    detection = detect(Image.new("RGB", (128, 128), COLOR_RGB[Color.GREEN]))
    assert detection.background == Color.GREEN
    assert detection.shapes == ()


def test_specks_are_ignored_when_smaller_than_the_minimum_area():
    pixels = np.zeros((128, 128, 3), dtype=np.uint8)
    pixels[10:14, 10:14] = COLOR_RGB[Color.RED]  # 16 pixels, under 0.5% of the image
    pixels[60:80, 60:80] = COLOR_RGB[Color.YELLOW]
    detection = detect(pixels)
    assert detection.background == Color.BLACK
    assert [(s.color, s.shape, s.position) for s in detection.shapes] == [(Color.YELLOW, Shape.SQUARE, Position.CENTER)]


def test_hand_built_scene_is_read_back_when_rendered():
    scene = Scene(
        Color.PURPLE,
        (
            SceneShape(Shape.STAR, Color.YELLOW, Size.LARGE, Position.TOP_LEFT),
            SceneShape(Shape.TRIANGLE, Color.ORANGE, Size.SMALL, Position.RIGHT),
            SceneShape(Shape.CIRCLE, Color.WHITE, Size.SMALL, Position.BOTTOM),
        ),
    )
    detection = detect(render(scene))
    assert isinstance(detection, Detection)
    assert {(s.color, s.shape, s.size, s.position) for s in detection.shapes} == {
        (s.color, s.shape, s.size, s.position) for s in scene.shapes
    }


def test_detection_takes_under_50_ms_when_the_image_is_128_pixels():
    images = [make_sample(seed, shapes=ALL_SHAPES).image for seed in range(20)]
    detect(images[0])
    start = time.perf_counter()
    for image in images:
        detect(image)
    assert (time.perf_counter() - start) / len(images) < 0.05


def test_components_join_diagonal_neighbours_and_take_their_smallest_index():
    mask = np.array(
        [
            [1, 1, 0, 0],
            [0, 0, 1, 1],
            [0, 0, 0, 0],
            [1, 0, 1, 1],
        ],
        dtype=bool,
    )
    labels = label_components(mask)
    assert labels[0, 0] == labels[0, 1] == labels[1, 2] == labels[1, 3] == 0
    assert labels[3, 0] == 12
    assert labels[3, 2] == labels[3, 3] == 14
    assert (labels[~mask] == 16).all()


def test_error_raised_if_the_array_is_not_rgb():
    with pytest.raises(ValueError, match="HxWx3"):
        detect(np.zeros((128, 128)))


def test_error_names_the_field_if_the_config_is_out_of_range():
    with pytest.raises(ValueError, match="min_area_fraction"):
        DetectorConfig(min_area_fraction=0.0)
