"""Score a shapes-world model on held-out prompts: does the picture show what the prompt says?

Prompts are the canonical captions of scenes from seeds no training run uses (recipe.HELD_OUT_FIRST_SEED on),
each drawn with several seeds. The detector reads every picture; each described shape is matched to the
detected shape nearest its cell (greedily, closest pairs first, one detected shape per description), so a
shape drawn in the wrong cell counts against position only, not also against its color and class:
- color / shape: the matched shape has the described color / class (no match: wrong);
- position: the matched shape's centroid lies in the described cell;
- background: the detected background is the described one;
- both present (prompts with two shapes): each described color+class is among the detected shapes;
- image-to-image: a held-out render redrawn at strength 0.3 with its caption; the IoU of each true shape's
  mask with the best-overlapping detected mask, averaged over shapes;
- seconds per image: median wall time of one text-to-image generation with the model's defaults.
The breakdown splits color, class and position by the number of shapes in the prompt, the described class and
the described size, and counts what each described class was read as: where a model falls short, it says where.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from engine.toyworld.captions import canonical_caption
from engine.toyworld.detector import DetectedShape, Detection, detect
from engine.toyworld.recipe import HELD_OUT_FIRST_SEED
from engine.toyworld.scene import Scene, SceneShape
from engine.toyworld.world import make_sample

IMG2IMG_STRENGTH = 0.3


class Unit(str, Enum):
    SHARE = "share"  # a fraction, shown as a percentage; the target is a floor
    MEAN = "mean"  # a mean in [0, 1]; the target is a floor
    SECONDS = "seconds"  # the target is a ceiling


@dataclass(frozen=True)
class Metric:
    name: str
    value: float
    target: float
    count: int  # what the share or mean is over
    unit: Unit = Unit.SHARE

    @property
    def met(self) -> bool:
        return self.value <= self.target if self.unit is Unit.SECONDS else self.value >= self.target

    def cells(self) -> tuple[str, str]:
        """The value and the target as the table shows them."""
        if self.unit is Unit.SHARE:
            return f"{self.value:.1%}", f">= {self.target:.0%}"
        if self.unit is Unit.MEAN:
            return f"{self.value:.3f}", f">= {self.target:g}"
        return f"{self.value:.2f} s", f"<= {self.target:g} s"


@dataclass(frozen=True)
class GroupScore:
    """Color, class and position shares over the described shapes of one group (such as "class: square")."""

    group: str
    shapes: int
    color: float
    shape: float
    position: float


@dataclass(frozen=True)
class ScoreReport:
    metrics: tuple[Metric, ...]
    prompts: int
    seeds: int
    groups: tuple[GroupScore, ...] = ()
    # (described class, what the matched detected shape was read as, or "missing", count), most common first
    read_as: tuple[tuple[str, str, int], ...] = ()

    def metric(self, name: str) -> Metric:
        return next(metric for metric in self.metrics if metric.name == name)

    def table(self) -> str:
        rows = [("metric", "value", "target", "n", "met")]
        for m in self.metrics:
            rows.append((m.name, *m.cells(), str(m.count), "yes" if m.met else "NO"))
        return _aligned(rows)

    def breakdown_table(self) -> str:
        rows = [("described shapes", "n", "color", "class", "position")]
        rows += [(g.group, str(g.shapes), f"{g.color:.1%}", f"{g.shape:.1%}", f"{g.position:.1%}") for g in self.groups]
        lines = [_aligned(rows), "", "each described class was read as:"]
        for want in dict.fromkeys(want for want, _, _ in self.read_as):
            total = sum(count for w, _, count in self.read_as if w == want)
            parts = [f"{got} {count / total:.0%}" for w, got, count in self.read_as if w == want]
            lines.append(f"  {want} (n={total}): " + ", ".join(parts))
        return "\n".join(lines)


def _aligned(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def held_out_scenes(count: int, size: int = 128) -> list[Scene]:
    return [make_sample(HELD_OUT_FIRST_SEED + index, size=size).scene for index in range(count)]


def match_shapes(described: tuple[SceneShape, ...], found: tuple[DetectedShape, ...], size: int
                 ) -> list[DetectedShape | None]:
    """For each described shape, the detected shape matched to it (closest to its cell center first)."""
    centers = [((s.position.column + 0.5) * size / 3, (s.position.row + 0.5) * size / 3) for s in described]
    pairs = sorted((np.hypot(cx - d.center[0], cy - d.center[1]), i, j)
                   for i, (cx, cy) in enumerate(centers) for j, d in enumerate(found))
    matched: list[DetectedShape | None] = [None] * len(described)
    used: set[int] = set()
    for _, i, j in pairs:
        if matched[i] is None and j not in used:
            matched[i] = found[j]
            used.add(j)
    return matched


@dataclass
class _Tally:
    color: int = 0
    shape: int = 0
    position: int = 0
    shapes: int = 0
    background: int = 0
    images: int = 0
    pairs_present: int = 0
    pairs: int = 0
    # group name -> [shapes, color right, class right, position right]
    groups: defaultdict = field(default_factory=lambda: defaultdict(lambda: [0, 0, 0, 0]))
    read_as: Counter = field(default_factory=Counter)

    def add(self, scene: Scene, detection: Detection) -> None:
        self.images += 1
        self.background += detection.background == scene.background
        for want, got in zip(scene.shapes, match_shapes(scene.shapes, detection.shapes, scene.size)):
            right = (0, 0, 0) if got is None else (got.color == want.color, got.shape == want.shape,
                                                   got.position == want.position)
            self.shapes += 1
            self.color += right[0]
            self.shape += right[1]
            self.position += right[2]
            for group in (f"shapes in the prompt: {len(scene.shapes)}", f"class: {want.shape.value}",
                          f"size: {want.size.value}"):
                tally = self.groups[group]
                tally[0] += 1
                for index, hit in enumerate(right, start=1):
                    tally[index] += hit
            self.read_as[(want.shape.value, "missing" if got is None else got.shape.value)] += 1
        if len(scene.shapes) == 2:
            self.pairs += 1
            seen = {(d.color, d.shape) for d in detection.shapes}
            self.pairs_present += all((s.color, s.shape) in seen for s in scene.shapes)


def mask_iou(scene: Scene, masks: tuple[np.ndarray, ...], detection: Detection) -> list[float]:
    """Per true shape, the IoU of its mask with the best-overlapping detected mask (0 when none overlaps)."""
    scores = []
    for mask in masks:
        best = 0.0
        for found in detection.shapes:
            union = np.logical_or(mask, found.mask).sum()
            best = max(best, float(np.logical_and(mask, found.mask).sum() / union) if union else 0.0)
        scores.append(best)
    return scores


def score_model(model, prompts: int = 60, seeds: int = 2, img2img: int | None = None, steps: int | None = None,
                progress: Callable[[str, int, int], None] | None = None) -> ScoreReport:
    """Score an engine.api.Model (a shapes-world model) on `prompts` held-out prompts x `seeds` seeds.

    img2img: how many held-out renders to redraw (default: prompts). steps: default the model's own.
    """
    size = model.preset.defaults.width
    scenes = held_out_scenes(prompts, size)
    tally, times = _Tally(), []
    total = prompts * seeds
    for index, scene in enumerate(scenes):
        for seed in range(seeds):
            began = time.perf_counter()
            result = model.generate(canonical_caption(scene), seed=seed, width=size, height=size, steps=steps)
            times.append(time.perf_counter() - began)
            tally.add(scene, detect(result.images[0]))
            if progress:
                progress("text-to-image", index * seeds + seed + 1, total)
    ious = []
    redraws = prompts if img2img is None else img2img
    for index in range(redraws):
        sample = make_sample(HELD_OUT_FIRST_SEED + index, size=size)
        result = model.generate(canonical_caption(sample.scene), input_image=sample.image, strength=IMG2IMG_STRENGTH,
                                seed=index, steps=steps)
        ious += mask_iou(sample.scene, sample.masks, detect(result.images[0]))
        if progress:
            progress("image-to-image", index + 1, redraws)
    metrics = (
        Metric("color of the described shape", tally.color / tally.shapes, 0.90, tally.shapes),
        Metric("shape class", tally.shape / tally.shapes, 0.80, tally.shapes),
        Metric("position (centroid in the named cell)", tally.position / tally.shapes, 0.80, tally.shapes),
        Metric("background color", tally.background / tally.images, 0.90, tally.images),
        Metric("two-shape prompts: both present", tally.pairs_present / tally.pairs if tally.pairs else float("nan"),
               0.60, tally.pairs),
        Metric("img2img at 0.3: mask IoU (mean)", float(np.mean(ious)) if ious else float("nan"), 0.70, len(ious),
               Unit.MEAN),
        Metric("seconds per image", statistics.median(times), 1.5, len(times), Unit.SECONDS),
    )
    groups = tuple(GroupScore(name, n, color / n, shape / n, position / n)
                   for name, (n, color, shape, position) in sorted(tally.groups.items()))
    read_as = tuple(sorted(((want, got, count) for (want, got), count in tally.read_as.items()),
                           key=lambda row: (row[0], -row[2], row[1])))
    return ScoreReport(metrics=metrics, prompts=prompts, seeds=seeds, groups=groups, read_as=read_as)

