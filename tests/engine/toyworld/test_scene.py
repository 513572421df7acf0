import pytest

from engine.toyworld.scene import Scene, SceneShape, cell_of, shape_box
from engine.toyworld.vocabulary import Color, Position, Shape, Size


def _shape(position=Position.CENTER, color=Color.RED, **overrides):
    return SceneShape(
        shape=overrides.get("shape", Shape.CIRCLE), color=color, size=overrides.get("size", Size.SMALL),
        position=position, offset=overrides.get("offset", (0.0, 0.0)),
    )


def test_words_become_enum_members_when_a_scene_is_built_from_strings():
    scene = Scene("blue", (SceneShape("circle", "red", "large", "in the top left"),))
    assert scene.background is Color.BLUE
    assert scene.shapes[0].shape is Shape.CIRCLE
    assert scene.shapes[0].position is Position.TOP_LEFT


def test_error_names_the_field_if_a_word_is_unknown():
    with pytest.raises(ValueError, match="color: unknown color 'pink'"):
        SceneShape("circle", "pink", "large", "in the top left")


def test_error_raised_if_two_shapes_share_a_cell():
    with pytest.raises(ValueError, match="share a cell"):
        Scene(Color.BLUE, (_shape(), _shape(color=Color.GREEN)))


def test_error_raised_if_a_shape_has_the_background_color():
    with pytest.raises(ValueError, match=r"shapes\[0\].color: blue"):
        Scene(Color.BLUE, (_shape(color=Color.BLUE),))


@pytest.mark.parametrize("count", [0, 4])
def test_error_raised_if_a_scene_holds_other_than_one_to_three_shapes(count):
    shapes = tuple(_shape(position=p) for p in list(Position)[:count])
    with pytest.raises(ValueError, match="1 to 3 shapes"):
        Scene(Color.BLUE, shapes)


def test_error_raised_if_an_offset_leaves_the_cell():
    with pytest.raises(ValueError, match="offset"):
        _shape(offset=(1.5, 0.0))


def test_shape_box_stays_inside_its_cell_when_pushed_to_a_corner():
    for size in (Size.SMALL, Size.LARGE):
        for offset in ((-1.0, -1.0), (1.0, 1.0)):
            shape = _shape(position=Position.BOTTOM_RIGHT, size=size, offset=offset)
            cx, cy, half = shape_box(shape, 128)
            cell = 128 / 3
            assert 2 * cell < cx - half and cx + half < 128
            assert 2 * cell < cy - half and cy + half < 128


def test_cell_of_names_the_grid_cell_when_given_a_point():
    assert cell_of(0, 0, 128) is Position.TOP_LEFT
    assert cell_of(64, 64, 128) is Position.CENTER
    assert cell_of(127.9, 10, 128) is Position.TOP_RIGHT
    assert cell_of(128, 128, 128) is Position.BOTTOM_RIGHT
    assert cell_of(10, 100, (200, 120)) is Position.BOTTOM_LEFT


def test_error_raised_if_the_point_is_outside_the_image():
    with pytest.raises(ValueError, match="outside"):
        cell_of(-1, 5, 128)
