"""Captions of shapes-world scenes: the canonical form, varied phrasings for training, and a parser.

The canonical form is what tests and scorers prompt with and parse back:
"a large red circle in the top left and a small green square at the bottom on a blue background".
Training captions mix it with other phrasings so a model learns the words rather than one template,
while the canonical form stays the most frequent one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, NamedTuple, TypeVar

from engine.toyworld.scene import Scene, SceneShape
from engine.toyworld.vocabulary import Color, Position, Shape, Size


def _article(next_word: str) -> str:
    return "an" if next_word[0] in "aeiou" else "a"


def _noun_phrase(shape: SceneShape, with_size: bool) -> str:
    """'large red circle' or 'red circle', without article or position."""
    words = ([shape.size.value] if with_size else []) + [shape.color.value, shape.shape.value]
    return " ".join(words)


def _with_article(phrase: str) -> str:
    return f"{_article(phrase)} {phrase}"


def entity_caption(shape: SceneShape, with_size: bool = True) -> str:
    """One shape in canonical words: 'a large red circle in the top left'."""
    return f"{_with_article(_noun_phrase(shape, with_size))} {shape.position.value}"


def _background(scene: Scene) -> str:
    return f"{_with_article(scene.background.value)} background"


def canonical_caption(scene: Scene, with_size: bool = True) -> str:
    """The canonical caption, the form `parse_caption` reads."""
    entities = " and ".join(entity_caption(s, with_size) for s in scene.shapes)
    return f"{entities} on {_background(scene)}"


def _background_first(scene: Scene, with_size: bool) -> str:
    entities = " and ".join(entity_caption(s, with_size) for s in scene.shapes)
    return f"{_background(scene)} with {entities}"


def _setting_first(scene: Scene, with_size: bool) -> str:
    entities = " and ".join(entity_caption(s, with_size) for s in scene.shapes)
    return f"on {_background(scene)}, {entities}"


def _terse(scene: Scene, with_size: bool) -> str:
    parts = [f"{_noun_phrase(s, with_size)}, {s.position.short}" for s in scene.shapes]
    return "; ".join(parts + [f"{scene.background.value} background"])


def _picture_of(scene: Scene, with_size: bool) -> str:
    return f"a picture of {canonical_caption(scene, with_size)}"


# (phrasing, weight): the canonical form gets the largest share so models trained on these captions
# answer best to the prompts the tests use.
_PHRASINGS: tuple[tuple[Callable[[Scene, bool], str], float], ...] = (
    (canonical_caption, 0.4),
    (_background_first, 0.15),
    (_setting_first, 0.15),
    (_terse, 0.15),
    (_picture_of, 0.15),
)
# Captions omit sizes this often, so a prompt without a size word is in-distribution too.
_SIZE_WORD_PROBABILITY = 0.7


def caption(scene: Scene, rng: random.Random) -> str:
    """A training caption: one of several phrasings, with or without size words, chosen by `rng`."""
    phrasings, weights = zip(*_PHRASINGS)
    phrasing = rng.choices(phrasings, weights=weights)[0]
    return phrasing(scene, rng.random() < _SIZE_WORD_PROBABILITY)


class ParsedShape(NamedTuple):
    color: Color
    shape: Shape
    size: Size | None
    position: Position


@dataclass(frozen=True)
class ParsedCaption:
    shapes: tuple[ParsedShape, ...]
    background: Color


_COLORS = {c.value: c for c in Color}
_SHAPES = {s.value: s for s in Shape}
_SIZES = {s.value: s for s in Size}
_POSITIONS = {p.value: p for p in Position}


_Word = TypeVar("_Word")


def _lookup(table: dict[str, _Word], word: str, kind: str, text: str) -> _Word:
    if word not in table:
        raise ValueError(f"unknown {kind} {word!r} in caption {text!r}; known: {', '.join(table)}")
    return table[word]


def _parse_entity(words: list[str], text: str) -> ParsedShape:
    if len(words) < 3 or words[0] not in ("a", "an"):
        raise ValueError(f"expected 'a [size] <color> <shape> <position>', got {' '.join(words)!r} in {text!r}")
    rest = words[1:]
    size = _SIZES.get(rest[0])
    if size is not None:
        rest = rest[1:]
    if len(rest) < 2:
        raise ValueError(f"expected '<color> <shape> <position>' after the article in {' '.join(words)!r}")
    color = _lookup(_COLORS, rest[0], "size or color" if size is None else "color", text)
    shape = _lookup(_SHAPES, rest[1], "shape", text)
    position = _lookup(_POSITIONS, " ".join(rest[2:]), "position", text)
    return ParsedShape(color, shape, size, position)


def parse_caption(text: str) -> ParsedCaption:
    """Read a canonical caption back into shapes and background; raises ValueError naming an unknown word."""
    words = text.strip().lower().rstrip(".").split()
    if len(words) < 4 or words[-4] != "on" or words[-3] not in ("a", "an") or words[-1] != "background":
        raise ValueError(f"a caption ends with 'on a <color> background', got {text!r}")
    background = _lookup(_COLORS, words[-2], "background color", text)
    entities: list[list[str]] = [[]]
    for word in words[:-4]:
        if word == "and":
            entities.append([])
        else:
            entities[-1].append(word)
    return ParsedCaption(tuple(_parse_entity(e, text) for e in entities), background)
