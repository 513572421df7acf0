"""Find the shapes in a shapes-world image: color, class, size, cell, box and mask of each.

Tests and scorers use it to judge what an image (rendered or generated) shows. Each pixel goes to its
nearest palette color and the most common one is the background. Shapes are the 8-connected regions of
everything else; a region's color is the palette color most of its pixels are close to. Grouping all
non-background pixels first, rather than one color at a time, keeps the mixed colors at a blurred edge
(red over blue reads as purple) inside the shape they surround instead of making rings of their own.
Each region is then trimmed to the pixels that are at least half shape color, read as a blend of
background and shape color, so blur neither grows nor shrinks it.

Classes come from three features that survive blur and pixelation, against a prototype per class:
fill, the share of its bounding box a shape covers (square 1.0, circle 0.79, triangle 0.52, star 0.41);
solidity, area over convex-hull area, which only the concave star lacks (about 0.58 against 0.92 and
more); and taper, the area above the box's middle line over the area below, 1/3 for the world's upright
triangle and about 1 for the others, which keeps blurred triangles (whose fill drifts up) apart from
circles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from engine.toyworld.scene import EXTENT_FRACTION, cell_of
from engine.toyworld.vocabulary import COLOR_RGB, Color, Position, Shape, Size

_PALETTE_COLORS: tuple[Color, ...] = tuple(COLOR_RGB)
_PALETTE = np.array([COLOR_RGB[c] for c in _PALETTE_COLORS], dtype=np.float32)

# (fill, solidity, taper) of each class, measured on clean renders at 128 pixels; a region takes the
# class of the nearest one. Solidity is weighted up: it alone separates the star from the convex shapes.
_PROTOTYPES: dict[Shape, tuple[float, float, float]] = {
    Shape.SQUARE: (1.0, 1.0, 1.0),
    Shape.CIRCLE: (0.79, 0.96, 1.0),
    Shape.TRIANGLE: (0.52, 0.94, 0.35),
    Shape.STAR: (0.41, 0.58, 0.85),
}
_FEATURE_WEIGHTS = np.array([1.0, 1.5, 1.0])
# Halfway between the small and large extents, as a fraction of the image side.
_SIZE_THRESHOLD = (EXTENT_FRACTION[Size.SMALL] + EXTENT_FRACTION[Size.LARGE]) / 2


@dataclass(frozen=True)
class DetectorConfig:
    """tolerance: how far (RGB distance) a pixel may be from a palette color and still vote for it.
    min_area_fraction: regions smaller than this share of the image are specks, not shapes.
    min_color_share: a region is a shape only if this share of its voting pixels pick one color."""

    tolerance: float = 100.0
    min_area_fraction: float = 0.005
    min_color_share: float = 0.5

    def __post_init__(self) -> None:
        if not self.tolerance > 0:
            raise ValueError(f"tolerance: must be positive, got {self.tolerance}")
        if not 0 < self.min_area_fraction < 1:
            raise ValueError(f"min_area_fraction: must be between 0 and 1, got {self.min_area_fraction}")
        if not 0 < self.min_color_share <= 1:
            raise ValueError(f"min_color_share: must be in (0, 1], got {self.min_color_share}")


@dataclass(frozen=True, eq=False)
class DetectedShape:
    """center is the centroid (x, y); bbox is (left, top, right, bottom) with right and bottom exclusive."""

    color: Color
    shape: Shape
    size: Size
    position: Position
    center: tuple[float, float]
    bbox: tuple[int, int, int, int]
    area: int
    mask: np.ndarray = field(repr=False)


@dataclass(frozen=True, eq=False)
class Detection:
    """The background color and the shapes found, largest first."""

    background: Color
    shapes: tuple[DetectedShape, ...]


def _as_rgb(image: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float32)
    pixels = np.asarray(image)
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"image: expected an HxWx3 RGB array with values 0..255, got shape {pixels.shape}")
    return pixels.astype(np.float32)


def _nearest_palette(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the nearest palette color per pixel and the distance to it."""
    distances = np.linalg.norm(pixels[:, :, None, :] - _PALETTE, axis=-1)
    nearest = distances.argmin(axis=-1)
    return nearest, np.take_along_axis(distances, nearest[..., None], axis=-1)[..., 0]


def _coverage(pixels: np.ndarray, background: np.ndarray, color: np.ndarray) -> np.ndarray:
    """How much of each pixel the shape covers, reading it as a blend of background and shape color:
    the position of the pixel's projection on the segment from background (0) to color (1)."""
    axis = color - background
    return (pixels - background) @ axis / float(axis @ axis)


# (pixels, their neighbours) as slice pairs, one per direction of 8-connectivity: diagonal steps
# keep the one-pixel tips of a small star attached to it.
_NEIGHBOURS = tuple(
    (
        (slice(max(0, -dy), None if dy <= 0 else -dy), slice(max(0, -dx), None if dx <= 0 else -dx)),
        (slice(max(0, dy), None if dy >= 0 else dy), slice(max(0, dx), None if dx >= 0 else dx)),
    )
    for dy in (-1, 0, 1)
    for dx in (-1, 0, 1)
    if (dy, dx) != (0, 0)
)


def label_components(foreground: np.ndarray) -> np.ndarray:
    """8-connected components of a bool mask: each pixel gets the smallest flat index in its component
    (background pixels get H*W). Minimum-label propagation with pointer jumping, which needs a number of
    rounds that grows with the log of a component's length rather than the length itself."""
    height, width = foreground.shape
    outside = height * width
    labels = np.where(foreground, np.arange(outside).reshape(height, width), outside)
    flat_foreground = foreground.ravel()
    while True:
        new = labels.copy()
        for target, source in _NEIGHBOURS:
            np.minimum(new[target], labels[source], out=new[target])
        new[~foreground] = outside
        # A label is the index of a pixel in the same component whose own label is no larger, so
        # following it is safe, and it short-cuts the long chains plain propagation would walk.
        flat = new.ravel()
        flat[flat_foreground] = flat[flat[flat_foreground]]
        if np.array_equal(new, labels):
            return labels
        labels = new


def _hull_area(mask: np.ndarray) -> float:
    """Area of the convex hull of the pixel squares (not pixel centers, so a solid square gives 1.0)."""
    rows = np.flatnonzero(mask.any(axis=1))
    left = mask[rows].argmax(axis=1)
    right = mask.shape[1] - mask[rows, ::-1].argmax(axis=1)
    # Only each row's outermost pixels can be on the hull; their outer corners bound it.
    points = sorted(
        {(float(x), float(row + dy)) for row, lo, hi in zip(rows, left, right) for x in (lo, hi) for dy in (0, 1)}
    )
    return _polygon_area(_convex_hull(points))


def _cross(o: tuple[float, float], a: tuple[float, float], b: tuple[float, float]) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def _convex_hull(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Andrew's monotone chain over points sorted by (x, y)."""
    lower: list[tuple[float, float]] = []
    upper: list[tuple[float, float]] = []
    for chain, ordered in ((lower, points), (upper, reversed(points))):
        for p in ordered:
            while len(chain) >= 2 and _cross(chain[-2], chain[-1], p) <= 0:
                chain.pop()
            chain.append(p)
    return lower[:-1] + upper[:-1]


def _polygon_area(vertices: list[tuple[float, float]]) -> float:
    xs, ys = np.array(vertices).T
    return float(abs(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1))) / 2)


def _classify(features: tuple[float, float, float]) -> Shape:
    return min(
        _PROTOTYPES,
        key=lambda s: float(np.sum((_FEATURE_WEIGHTS * (np.array(features) - _PROTOTYPES[s])) ** 2)),
    )


def shape_features(mask: np.ndarray) -> tuple[float, float, float]:
    """(fill, solidity, taper) of a non-empty region; see the module docstring."""
    rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    box = mask[rows[0] : rows[-1] + 1, columns[0] : columns[-1] + 1]
    area = float(box.sum())
    # Share of each row above the box's middle line (the middle row of an odd height is split).
    above = np.clip(len(box) / 2 - np.arange(len(box)), 0.0, 1.0)
    top = float(box.sum(axis=1) @ above)
    return area / box.size, area / _hull_area(box), top / max(area - top, 1.0)


def count_points(mask: np.ndarray, directions: int = 72, prominence: float = 0.2) -> int:
    """How many points (tips, corners) a non-empty region sticks out: circle 0, triangle 3, square 4, star 5.

    The class prototypes above name the nearest class even for a shape that is none of them; a generated
    blob with two lobes is concave like a star and is read as one. Counting points tells them apart: the
    region's farthest reach from its centroid, in each of `directions` directions, makes a closed profile,
    and a point is a rise of at least `prominence` times the largest reach above the valley before it,
    followed by the same fall.
    """
    ys, xs = np.nonzero(mask)
    dy, dx = ys - ys.mean(), xs - xs.mean()
    direction = ((np.arctan2(dy, dx) + np.pi) / (2 * np.pi) * directions).astype(int) % directions
    reach = np.zeros(directions)
    np.maximum.at(reach, direction, np.hypot(dy, dx) + 0.5)
    seen = np.flatnonzero(reach > 0)  # a small region leaves some directions without a pixel
    reach = np.interp(np.arange(directions), seen, reach[seen], period=directions)
    reach = (np.roll(reach, 1) + reach + np.roll(reach, -1)) / 3  # one-pixel steps are not points
    rise = prominence * reach.max()
    walk = np.roll(reach, -int(reach.argmin()))  # start in the deepest valley and come back to it
    points, low, high, climbing = 0, walk[0], walk[0], True
    for value in np.append(walk[1:], walk[0]):
        if climbing:
            high = max(high, value)
            if high - low >= rise and high - value >= rise:
                points, climbing, low = points + 1, False, value
        else:
            low = min(low, value)
            if value - low >= rise:
                climbing, high = True, value
    return points


def _describe(mask: np.ndarray, color: Color, image_side: float) -> DetectedShape:
    ys, xs = np.nonzero(mask)
    left, top, right, bottom = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    center = (float(xs.mean()) + 0.5, float(ys.mean()) + 0.5)
    extent = max(right - left, bottom - top) / image_side
    return DetectedShape(
        color=color,
        shape=_classify(shape_features(mask)),
        size=Size.LARGE if extent > _SIZE_THRESHOLD else Size.SMALL,
        position=cell_of(*center, (mask.shape[1], mask.shape[0])),
        center=center,
        bbox=(left, top, right, bottom),
        area=int(xs.size),
        mask=mask,
    )


def detect(image: Image.Image | np.ndarray, config: DetectorConfig = DetectorConfig()) -> Detection:
    """Find the background color and the shapes of an image (PIL, or an HxWx3 array of 0..255 values)."""
    pixels = _as_rgb(image)
    height, width = pixels.shape[:2]
    nearest, distance = _nearest_palette(pixels)
    background = int(np.bincount(nearest.ravel(), minlength=len(_PALETTE_COLORS)).argmax())
    foreground = nearest != background
    # Only pixels close to a palette color vote on a region's color; -1 marks the rest.
    votes = np.where(distance <= config.tolerance, nearest, -1).ravel()

    labels = label_components(foreground).ravel()
    roots, counts = np.unique(labels[foreground.ravel()], return_counts=True)
    min_area = config.min_area_fraction * height * width
    shapes = []
    for root in roots[counts >= min_area]:
        inside = labels == root
        region_votes = votes[inside]
        tally = np.bincount(region_votes[region_votes >= 0], minlength=len(_PALETTE_COLORS))
        if tally.sum() == 0 or tally.max() < config.min_color_share * tally.sum():
            continue
        color = int(tally.argmax())
        mask = inside.copy()
        mask[inside] = _coverage(pixels.reshape(-1, 3)[inside], _PALETTE[background], _PALETTE[color]) >= 0.5
        if mask.sum() < min_area:
            continue
        shapes.append(_describe(mask.reshape(height, width), _PALETTE_COLORS[color], math.sqrt(height * width)))
    shapes.sort(key=lambda s: -s.area)
    return Detection(background=_PALETTE_COLORS[background], shapes=tuple(shapes))
