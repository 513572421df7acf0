"""What a shapes-world image shows, as data: a background and 1 to 3 shapes on a 3x3 grid.

A scene is independent of how it was sampled or drawn; the geometry here (where a shape's box lies
for a given image size, which cell a point falls in) is shared by the renderer and the detector.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TypeVar

from engine.toyworld.vocabulary import Color, Position, Shape, Size

MAX_SHAPES = 3
# Below this, small shapes are a handful of pixels and stop being recognisable.
MIN_IMAGE_SIZE = 48

# Side of a shape's bounding box as a fraction of the image side.
EXTENT_FRACTION: dict[Size, float] = {Size.SMALL: 1 / 6, Size.LARGE: 1 / 3.5}
# Gap kept between a shape and the edge of its cell, so shapes never touch one another or the image
# border, and blur cannot merge two neighbours into one blob.
MARGIN_FRACTION = 1 / 64


_E = TypeVar("_E", bound=Enum)


def _as_enum(kind: type[_E], value: object, field: str) -> _E:
    try:
        return kind(value)
    except ValueError:
        known = ", ".join(member.value for member in kind)
        raise ValueError(f"{field}: unknown {kind.__name__.lower()} {value!r}; known: {known}") from None


@dataclass(frozen=True)
class SceneShape:
    """One shape; `offset` moves it inside its cell, as a fraction (-1..1) of the room it has there."""

    shape: Shape
    color: Color
    size: Size
    position: Position
    offset: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        for field, kind in (("shape", Shape), ("color", Color), ("size", Size), ("position", Position)):
            object.__setattr__(self, field, _as_enum(kind, getattr(self, field), field))
        if len(self.offset) != 2 or not all(-1.0 <= float(o) <= 1.0 for o in self.offset):
            raise ValueError(f"offset: {self.offset!r} must be two numbers between -1 and 1")
        object.__setattr__(self, "offset", (float(self.offset[0]), float(self.offset[1])))


@dataclass(frozen=True)
class Scene:
    background: Color
    shapes: tuple[SceneShape, ...]
    size: int = 128

    def __post_init__(self) -> None:
        object.__setattr__(self, "background", _as_enum(Color, self.background, "background"))
        object.__setattr__(self, "shapes", tuple(self.shapes))
        if not 1 <= len(self.shapes) <= MAX_SHAPES:
            raise ValueError(f"shapes: a scene holds 1 to {MAX_SHAPES} shapes, got {len(self.shapes)}")
        positions = [s.position for s in self.shapes]
        if len(set(positions)) != len(positions):
            raise ValueError(f"shapes: two shapes share a cell ({', '.join(p.value for p in positions)})")
        for i, s in enumerate(self.shapes):
            if s.color == self.background:
                raise ValueError(f"shapes[{i}].color: {s.color.value} is also the background color")
        if self.size < MIN_IMAGE_SIZE:
            raise ValueError(f"size: images are at least {MIN_IMAGE_SIZE} pixels wide, got {self.size}")


def shape_box(shape: SceneShape, image_size: int) -> tuple[float, float, float]:
    """Center (x, y) and half side of the square box the shape is drawn in, in pixels."""
    cell = image_size / 3
    half = EXTENT_FRACTION[shape.size] * image_size / 2
    room = max(0.0, cell / 2 - half - MARGIN_FRACTION * image_size)
    cx = (shape.position.column + 0.5) * cell + shape.offset[0] * room
    cy = (shape.position.row + 0.5) * cell + shape.offset[1] * room
    return cx, cy, half


def cell_of(x: float, y: float, size: int | tuple[int, int]) -> Position:
    """The grid cell holding pixel coordinate (x, y) of an image of side `size` (or (width, height))."""
    width, height = (size, size) if isinstance(size, int) else size
    if not (0 <= x <= width and 0 <= y <= height):
        raise ValueError(f"point ({x}, {y}) lies outside a {width}x{height} image")
    column = min(int(3 * x / width), 2)
    row = min(int(3 * y / height), 2)
    return Position.at(row, column)
