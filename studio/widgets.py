"""Pieces every generating tab shares: size choices from the preset, the seed rule, the progress line."""

from __future__ import annotations

import html
import math
import random
from collections.abc import Callable

from engine.presets import Preset
from studio.jobs import Stage, Update

RANDOM_SEED = -1  # in the seed field: draw a new seed for every run
SEED_DRAW_LIMIT = 2**32  # drawn seeds stay short enough to read and type back

# Common ratios, to name a preset's sizes; a size within 4% of one gets its name (1472x1140 is "4:3").
RATIOS = ((1, 1), (16, 9), (9, 16), (4, 3), (3, 4), (3, 2), (2, 3), (21, 9), (9, 21), (5, 4), (4, 5), (2, 1), (1, 2))


def size_label(width: int, height: int) -> str:
    """'1664×928 (16:9)'; the ratio is left out when no common one is close."""
    for a, b in RATIOS:
        if abs(width / height / (a / b) - 1) <= 0.04:
            return f"{width}×{height} ({a}:{b})"
    return f"{width}×{height}"


def size_choices(preset: Preset) -> list[tuple[str, str]]:
    """(label, value) for the aspect picker; the value is 'WIDTHxHEIGHT'."""
    return [(size_label(w, h), f"{w}x{h}") for w, h in preset.sizes]


def parse_size(value: str) -> tuple[int, int]:
    width, _, height = value.partition("x")
    return int(width), int(height)


def pick_seed(requested: int | float | None, draw: Callable[[int], int] = random.randrange) -> int:
    """The seed field's value, or a fresh random one for RANDOM_SEED (or an empty field)."""
    if requested is None or int(requested) == RANDOM_SEED:
        return draw(SEED_DRAW_LIMIT)
    return int(requested)


def progress_html(update: Update | None, preset_title: str = "") -> str:
    """A bar with words: what the job is doing, the step, and the time left."""
    if update is None:
        return _bar(0.0, "")
    if update.stage is Stage.WAITING:
        return _bar(0.0, "Waiting for the previous job to finish…")
    if update.stage is Stage.LOADING:
        return _bar(0.0, f"Loading {preset_title or 'the model'}… (once; later runs start at once)")
    progress = update.progress
    if progress is None:
        return _bar(0.0, "Starting…")
    eta = "" if math.isnan(progress.eta_s) else f" · {progress.eta_s:.1f} s left"
    return _bar(progress.fraction, f"Step {progress.step} of {progress.total}{eta}")


def message_html(text: str, failed: bool = False) -> str:
    """The progress line holding a message instead of a bar (done, cancelled, failed)."""
    kind = "studio-progress-text studio-failed" if failed else "studio-progress-text"
    return f'<div class="studio-progress"><div class="{kind}">{html.escape(text)}</div></div>'


def _bar(fraction: float, text: str) -> str:
    percent = max(0.0, min(1.0, fraction)) * 100
    return (f'<div class="studio-progress" role="progressbar" aria-valuenow="{percent:.0f}" aria-valuemin="0" '
            f'aria-valuemax="100"><div class="studio-progress-track"><div class="studio-progress-fill" '
            f'style="width:{percent:.1f}%"></div></div><div class="studio-progress-text">{html.escape(text)}</div>'
            f'</div>')
