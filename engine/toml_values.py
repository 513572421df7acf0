"""One rule for typed values read from TOML files (presets, training runs), so both read numbers alike."""

from __future__ import annotations

from typing import Any


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
