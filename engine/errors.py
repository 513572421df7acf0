"""Typed errors of the engine.

Every error a user can cause or fix derives from EngineError and carries a hint saying what to do.
The CLI prints `str(error)` on one line and exits 2; the studio turns it into a message in the page.
Anything else that escapes is a bug in the engine, not bad input.
"""

from __future__ import annotations


class EngineError(Exception):
    """An error the user can act on: a message saying what was wrong and a hint saying what to do."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} {self.hint}".strip()


class PresetError(EngineError):
    """A preset is unknown or its TOML file is malformed."""


class SettingsError(EngineError):
    """Generation settings are out of range or contradict each other."""


class MissingFilesError(EngineError):
    """Weights or configs a model needs are not on disk and no hub could provide them."""


class WeightsError(EngineError):
    """Weight files exist but are unreadable, truncated, unsafe or do not fit the model."""


class LoraError(EngineError):
    """A LoRA file is missing, unreadable, for another model, or does not fit this one."""


class InputImageError(EngineError):
    """An input image cannot be read."""


class Cancelled(EngineError):
    """The caller asked a running job to stop; nothing was written."""

    def __init__(self, message: str = "Cancelled.", hint: str = ""):
        super().__init__(message, hint)
