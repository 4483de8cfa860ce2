"""JSON through the C accelerator alone, for the per-container processes (runtime and shim).

``import json`` costs about 15 ms here (it pulls in ``re`` and ``enum``): more than a third of
a runc ``run``. ``_json`` holds the same C scanner and encoder; this module wires them up the
way ``json.decoder``/``json.encoder`` do, without those imports.
"""

from __future__ import annotations

import _json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class JSONError(ValueError):
    pass


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
        raise JSONError(f"invalid constant {name}")


_scan = _json.make_scanner(_Context())
_WHITESPACE = " \t\n\r"


def _default(obj: Any) -> Any:
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


_encode = _json.make_encoder(None, _default, _json.encode_basestring_ascii, None, ": ", ", ", False, False, True)


def loads(data: str | bytes) -> Any:
    text = data.decode("utf-8-sig") if isinstance(data, bytes) else data
    start = len(text) - len(text.lstrip(_WHITESPACE))
    try:
        value, end = _scan(text, start)
    except StopIteration as e:
        raise JSONError(f"Expecting value: char {e.value}") from None
    except (ValueError, SystemError):
        # The C scanner builds its error from json.decoder, which it only finds when already
        # imported: on this (rare) path, pay for the stdlib parser to get its message.
        import json

        try:
            json.loads(text)
        except ValueError as e:
            raise JSONError(str(e)) from None
        raise JSONError("invalid JSON") from None
    if text[end:].strip(_WHITESPACE):
        raise JSONError(f"Extra data: char {end}")
    return value


def dumps(obj: Any, indent: int | None = None) -> str:
    if indent is None:
        return "".join(_encode(obj, 0))
    return _pretty(obj, indent, 0)


def _pretty(obj: Any, indent: int, level: int) -> str:
    pad = " " * (indent * (level + 1))
    end = " " * (indent * level)
    if isinstance(obj, dict) and obj:
        items = ",\n".join(f"{pad}{_json.encode_basestring_ascii(str(k))}: {_pretty(v, indent, level + 1)}"
                           for k, v in obj.items())
        return "{\n" + items + "\n" + end + "}"
    if isinstance(obj, list) and obj:
        items = ",\n".join(pad + _pretty(v, indent, level + 1) for v in obj)
        return "[\n" + items + "\n" + end + "]"
    return "".join(_encode(obj, 0))
