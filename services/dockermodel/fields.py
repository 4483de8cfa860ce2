"""Checks for fields of the clients' untyped JSON bodies: a value of the wrong type is the client's
error (InvalidArgument, a 400), never a TypeError (a 500)."""

from __future__ import annotations

from typing import Any

from services.common.errors import InvalidArgument


def string_list(value: Any, field: str, *, allow_single: bool = True) -> list[str]:
    """A list of strings; None is empty; a lone string counts as a list of one where Docker allows it."""
    if value is None:
        return []
    if allow_single and isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    expected = "a string or a list of strings" if allow_single else "a list of strings"
    raise InvalidArgument(f"invalid {field}: expected {expected}")


def integer(value: Any, field: str, bits: int = 64) -> int:
    """An integer that fits the daemon's field of ``bits`` bits; None is 0."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"invalid {field}: expected an integer")
    # What does not fit the daemon's field cannot cross the boundary: a 400, not a 500 (schemathesis).
    if not -(2 ** (bits - 1)) <= value < 2 ** (bits - 1):
        raise InvalidArgument(f"invalid {field}: {value} is out of range")
    return value


def string(value: Any, field: str) -> str:
    """A string; None is empty."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidArgument(f"invalid {field}: expected a string")
    return value
