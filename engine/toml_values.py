"""Typed reads from parsed TOML tables (presets, training runs), so every file reads its values alike."""

from __future__ import annotations

from typing import Any

from engine.errors import EngineError


def as_kind(value: Any, kind: type | tuple[type, ...]) -> tuple[bool, Any]:
    """(True, value as `kind`) or (False, value) when it is not one.

    A TOML integer is acceptable where a float is expected (and becomes one); a boolean never passes as a
    number, although Python counts bool as an int.
    """
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return True, float(value)
    if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
        return False, value
    return True, value


class TypedTable:
    """Typed reads from one table; a subclass sets `table` and says how its errors name the file and key."""

    table: dict[str, Any]

    def fail(self, key: str, problem: str) -> EngineError:
        raise NotImplementedError

    def kind_words(self, kind: type | tuple[type, ...]) -> str:
        """How an error names the kind expected."""
        return kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        """The value at key as `kind`; `default` when absent (no default: it must be there)."""
        if key not in self.table:
            if default is ...:
                raise self.fail(key, "is missing")
            return default
        fits, value = as_kind(self.table[key], kind)
        if not fits:
            raise self.fail(key, f"must be {self.kind_words(kind)}, got {value!r}")
        return value
