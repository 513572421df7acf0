"""The words of the shapes world: shapes, colors, sizes and the nine positions of a 3x3 grid.

Every caption, parser, sampler and detector reads these, so a word exists in exactly one place.
The star is held out: the default sampler never draws one, so a later LoRA can teach it to a base
model that has never seen it.
"""

from __future__ import annotations

from enum import Enum


class Shape(str, Enum):
    CIRCLE = "circle"
    SQUARE = "square"
    TRIANGLE = "triangle"
    STAR = "star"


# What base training data is drawn from; the star only appears when a caller asks for it.
BASE_SHAPES: tuple[Shape, ...] = (Shape.CIRCLE, Shape.SQUARE, Shape.TRIANGLE)
HELD_OUT_SHAPES: tuple[Shape, ...] = (Shape.STAR,)


class Color(str, Enum):
    RED = "red"
    GREEN = "green"
    BLUE = "blue"
    YELLOW = "yellow"
    WHITE = "white"
    BLACK = "black"
    ORANGE = "orange"
    PURPLE = "purple"


# Saturated and far apart (the closest pair, orange and yellow, is 115 apart in RGB), so that a
# detector can still tell them apart on blurry or generated images.
COLOR_RGB: dict[Color, tuple[int, int, int]] = {
    Color.RED: (255, 0, 0),
    Color.GREEN: (0, 190, 0),
    Color.BLUE: (0, 0, 255),
    Color.YELLOW: (255, 255, 0),
    Color.WHITE: (255, 255, 255),
    Color.BLACK: (0, 0, 0),
    Color.ORANGE: (255, 140, 0),
    Color.PURPLE: (140, 40, 200),
}


class Size(str, Enum):
    SMALL = "small"
    LARGE = "large"


class Position(str, Enum):
    """A cell of the 3x3 grid; the value is the phrase a caption uses for it."""

    TOP_LEFT = "in the top left"
    TOP = "at the top"
    TOP_RIGHT = "in the top right"
    LEFT = "on the left"
    CENTER = "in the center"
    RIGHT = "on the right"
    BOTTOM_LEFT = "in the bottom left"
    BOTTOM = "at the bottom"
    BOTTOM_RIGHT = "in the bottom right"

    @property
    def row(self) -> int:
        return _POSITION_ORDER.index(self) // 3

    @property
    def column(self) -> int:
        return _POSITION_ORDER.index(self) % 3

    @property
    def short(self) -> str:
        """The phrase without its preposition ("top left", "center"), for terse captions."""
        return self.value.split(" ", 2)[2]

    @classmethod
    def at(cls, row: int, column: int) -> Position:
        if not (0 <= row < 3 and 0 <= column < 3):
            raise ValueError(f"grid cell ({row}, {column}) is outside the 3x3 grid; row and column are 0, 1 or 2")
        return _POSITION_ORDER[row * 3 + column]


# Reading order, row by row; Enum iteration keeps definition order, which is this order.
_POSITION_ORDER: tuple[Position, ...] = tuple(Position)
