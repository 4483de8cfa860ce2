"""Checks for fields of the clients' untyped JSON bodies, shared by the resource modules."""

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
