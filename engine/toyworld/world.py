"""The shapes-world generator: seeded scenes, their pixels, per-shape masks and captions.

Everything is a pure function of the seed: the same seed gives the same scene, pixels and caption on
every machine (Python's `random.Random` keeps its streams across versions; numpy's Generator does not
promise to). Shapes are rasterised here, without anti-aliasing, from the pixel centers, so a shape's
mask is exactly the set of pixels painted in its color and every color in a clean image is a palette
color.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from engine.toyworld.captions import caption, canonical_caption, entity_caption, parse_caption
from engine.toyworld.scene import MAX_SHAPES, Scene, SceneShape, cell_of, shape_box
from engine.toyworld.vocabulary import BASE_SHAPES, COLOR_RGB, Color, Position, Shape, Size

# The world's public face: what the issue names as world.py's API is importable from here, though the
# captions and the grid geometry live in their own modules.
__all__ = [
    "Sample", "Scene", "SceneShape", "canonical_caption", "caption", "cell_of", "check_shapes",
    "entity_caption", "make_sample", "parse_caption", "render", "sample_scene", "shape_mask", "shape_masks",
]


def _star_outline(points: int = 5, inner_ratio: float = 0.45) -> np.ndarray:
    """A star's vertices, stretched to fill the box [-1, 1]^2 like the other shapes do."""
    angles = -math.pi / 2 + np.arange(2 * points) * math.pi / points
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner_ratio)
    xy = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    low, high = xy.min(axis=0), xy.max(axis=0)
    return 2 * (xy - low) / (high - low) - 1


# Polygons in the unit box [-1, 1]^2, y pointing down. An inner ratio of 0.45 keeps the star's arms
# thick enough to survive at the small size while leaving it clearly concave (solidity ~0.56).
_POLYGONS: dict[Shape, np.ndarray] = {
    Shape.TRIANGLE: np.array([(0.0, -1.0), (1.0, 1.0), (-1.0, 1.0)]),
    Shape.STAR: _star_outline(),
}


def _polygon_inside(vertices: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Even-odd rule: a point is inside when a ray to its left crosses the outline an odd number of times."""
    inside = np.zeros(np.broadcast_shapes(x.shape, y.shape), dtype=bool)
    for (x0, y0), (x1, y1) in zip(vertices, np.roll(vertices, -1, axis=0)):
        if y0 == y1:
            continue
        crosses = (y0 > y) != (y1 > y)
        x_at = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (x < x_at)
    return inside


def shape_mask(shape: SceneShape, image_size: int) -> np.ndarray:
    """The pixels (bool, HxW) the shape covers: those whose center lies inside its outline."""
    cx, cy, half = shape_box(shape, image_size)
    mask = np.zeros((image_size, image_size), dtype=bool)
    # Only the box around the shape can be inside; testing just that window keeps rendering cheap.
    top, bottom = max(0, math.floor(cy - half)), min(image_size, math.ceil(cy + half) + 1)
    left, right = max(0, math.floor(cx - half)), min(image_size, math.ceil(cx + half) + 1)
    u = ((np.arange(left, right) + 0.5 - cx) / half)[None, :]
    v = ((np.arange(top, bottom) + 0.5 - cy) / half)[:, None]
    if shape.shape == Shape.CIRCLE:
        window = u**2 + v**2 <= 1.0
    elif shape.shape == Shape.SQUARE:
        window = (np.abs(u) <= 1.0) & (np.abs(v) <= 1.0)
    else:
        window = _polygon_inside(_POLYGONS[shape.shape], u, v)
    mask[top:bottom, left:right] = window
    return mask


def shape_masks(scene: Scene) -> tuple[np.ndarray, ...]:
    """One bool HxW mask per shape, in the scene's order."""
    return tuple(shape_mask(s, scene.size) for s in scene.shapes)


def _paint(scene: Scene, masks: Iterable[np.ndarray]) -> Image.Image:
    pixels = np.empty((scene.size, scene.size, 3), dtype=np.uint8)
    pixels[:] = COLOR_RGB[scene.background]
    for s, mask in zip(scene.shapes, masks):
        pixels[mask] = COLOR_RGB[s.color]
    return Image.fromarray(pixels, mode="RGB")


def render(scene: Scene) -> Image.Image:
    """The scene as an RGB image of side `scene.size`."""
    return _paint(scene, shape_masks(scene))


_SHAPE_NAMES = tuple(s.value for s in Shape)


def check_shapes(shapes: Iterable[Shape | str]) -> tuple[Shape, ...]:
    """The shapes a sampler may draw from, as Shape members; raises ValueError naming an unknown one."""
    chosen = tuple(shapes)
    if not chosen:
        raise ValueError("shapes: give at least one shape to draw from")
    unknown = [s for s in chosen if s not in _SHAPE_NAMES]
    if unknown:
        raise ValueError(f"shapes: unknown shape {unknown[0]!r}; known: {', '.join(_SHAPE_NAMES)}")
    return tuple(Shape(s) for s in chosen)


def _draw_scene(rng: random.Random, size: int, shapes: tuple[Shape, ...]) -> Scene:
    background = rng.choice(list(Color))
    shape_colors = [c for c in Color if c != background]
    positions = rng.sample(list(Position), rng.randint(1, MAX_SHAPES))
    placed = tuple(
        SceneShape(
            shape=rng.choice(shapes),
            color=rng.choice(shape_colors),
            size=rng.choice(list(Size)),
            position=position,
            offset=(rng.uniform(-1.0, 1.0), rng.uniform(-1.0, 1.0)),
        )
        for position in positions
    )
    return Scene(background=background, shapes=placed, size=size)


def sample_scene(seed: int, size: int = 128, shapes: Iterable[Shape | str] = BASE_SHAPES) -> Scene:
    """A random scene for `seed`. Stars appear only when `shapes` names them (they are held out)."""
    return _draw_scene(random.Random(seed), size, check_shapes(shapes))


@dataclass(frozen=True, eq=False)
class Sample:
    """A training example: the scene, its image and caption, and one mask and caption per shape."""

    scene: Scene
    image: Image.Image
    caption: str
    masks: tuple[np.ndarray, ...] = field(repr=False)
    entity_captions: tuple[str, ...]


def make_sample(seed: int, size: int = 128, shapes: Iterable[Shape | str] = BASE_SHAPES) -> Sample:
    """The scene of `sample_scene(seed, size, shapes)` rendered, with a caption also chosen by `seed`."""
    rng = random.Random(seed)
    scene = _draw_scene(rng, size, check_shapes(shapes))
    masks = shape_masks(scene)
    return Sample(
        scene=scene,
        image=_paint(scene, masks),
        caption=caption(scene, rng),
        masks=masks,
        entity_captions=tuple(entity_caption(s) for s in scene.shapes),
    )
