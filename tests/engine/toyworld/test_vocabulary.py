import itertools
import math

import pytest

from engine.toyworld.vocabulary import BASE_SHAPES, COLOR_RGB, HELD_OUT_SHAPES, Color, Position, Shape, Size


def test_positions_are_the_nine_grid_phrases_in_reading_order_when_listed():
    assert [p.value for p in Position] == [
        "in the top left", "at the top", "in the top right",
        "on the left", "in the center", "on the right",
        "in the bottom left", "at the bottom", "in the bottom right",
    ]


def test_position_row_and_column_round_trip_when_built_from_the_grid():
    for position in Position:
        assert Position.at(position.row, position.column) is position
    assert Position.at(0, 2) is Position.TOP_RIGHT
    assert Position.at(2, 1) is Position.BOTTOM


def test_error_raised_if_a_grid_cell_is_outside_the_grid():
    with pytest.raises(ValueError, match=r"\(3, 0\)"):
        Position.at(3, 0)


def test_short_position_drops_the_preposition_when_asked():
    assert [p.short for p in Position] == [
        "top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right",
    ]


def test_colors_are_the_eight_named_colors_each_with_an_rgb_value():
    assert [c.value for c in Color] == ["red", "green", "blue", "yellow", "white", "black", "orange", "purple"]
    assert set(COLOR_RGB) == set(Color)
    assert COLOR_RGB[Color.ORANGE] == (255, 140, 0)
    assert COLOR_RGB[Color.PURPLE] == (140, 40, 200)


def test_colors_are_well_separated_when_compared_pairwise():
    closest = min(math.dist(COLOR_RGB[a], COLOR_RGB[b]) for a, b in itertools.combinations(Color, 2))
    assert closest >= 100


def test_star_is_held_out_of_the_base_shapes():
    assert [s.value for s in Shape] == ["circle", "square", "triangle", "star"]
    assert BASE_SHAPES == (Shape.CIRCLE, Shape.SQUARE, Shape.TRIANGLE)
    assert HELD_OUT_SHAPES == (Shape.STAR,)


def test_sizes_are_small_and_large():
    assert [s.value for s in Size] == ["small", "large"]
