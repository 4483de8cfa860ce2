"""JSON through the C accelerator ``_json`` alone.

``import json`` costs about 14 ms (it pulls in ``re``, ``enum``, ``functools``, ``collections``):
more than the rest of the shim's start-up, paid once per container. The shim's messages are plain
objects, so the C scanner and encoder wired up as ``json`` does are all it needs.
"""

from __future__ import annotations

import _json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class _Context:
    """The attributes ``_json.make_scanner`` reads from a JSONDecoder."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    memo: dict[str, str] = {}

    @staticmethod
    def parse_constant(name: str) -> float:
        raise ValueError(f"invalid JSON constant {name}")


_scan = _json.make_scanner(_Context())


def _default(obj: Any) -> Any:
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


_encode = _json.make_encoder(None, _default, _json.encode_basestring_ascii, None, ": ", ", ", False, False, True)


def loads(data: str | bytes) -> Any:
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    stripped = text.strip(" \t\n\r")
    try:
        value, end = _scan(stripped, 0)
    except StopIteration as exc:
        raise ValueError(f"JSON: expecting value at char {exc.value}") from None
    if end != len(stripped):
        raise ValueError(f"JSON: extra data at char {end}")
    return value


def dumps(obj: Any) -> str:
    return "".join(_encode(obj, 0))
