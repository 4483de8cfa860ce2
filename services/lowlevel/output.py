"""runc's output formats: Go's JSON encoding (compact or indented) and text/tabwriter's tables.

Scripts written for runc match its bytes: ``{"id":"x","pid":1}`` with no space after ``:`` or
``,``, keys in the order of runc's structs (a dict's order here), non-ASCII text as UTF-8 and
``<``, ``>``, ``&`` escaped as Go's encoder does. ``_json``'s C encoder does the work.
"""

from __future__ import annotations

import _json

# typing costs milliseconds of import on every launch; annotations are strings here.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def _default(obj: Any) -> Any:
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


_encode = _json.make_encoder(None, _default, _json.encode_basestring, None, ":", ",", False, False, True)


def _go_escapes(text: str) -> str:
    """Go's HTML-safe escapes; they can only occur inside strings, so a plain replace is exact."""
    if "<" in text or ">" in text or "&" in text or "\u2028" in text or "\u2029" in text:
        text = (
            text.replace("<", "\\u003c")
            .replace(">", "\\u003e")
            .replace("&", "\\u0026")
            .replace("\u2028", "\\u2028")
            .replace("\u2029", "\\u2029")
        )
    return text


def go_json(obj: Any) -> str:
    """json.Marshal's bytes (json.Encoder.Encode adds a newline: the caller's print does)."""
    return _go_escapes("".join(_encode(obj, 0)))


def go_json_indent(obj: Any, indent: str) -> str:
    """json.MarshalIndent(obj, "", indent): one member a line, ``"key": value``, empty ones as {} and []."""
    return _go_escapes(_indented(obj, indent, 0))


def _indented(obj: Any, indent: str, level: int) -> str:
    pad = indent * (level + 1)
    if isinstance(obj, dict) and obj:
        items = [f"{pad}{_json.encode_basestring(str(k))}: {_indented(v, indent, level + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent * level + "}"
    if isinstance(obj, list) and obj:
        items = [pad + _indented(v, indent, level + 1) for v in obj]
        return "[\n" + ",\n".join(items) + "\n" + indent * level + "]"
    return "".join(_encode(obj, 0))


def table(rows: list[list[str]], minwidth: int = 12, padding: int = 3) -> str:
    """text/tabwriter as runc's list uses it (minwidth 12, padding 3, blanks): every cell but a
    line's last is padded to its column's width; the last one is written as it is."""
    widths = [0] * max(len(r) for r in rows)
    for r in rows:
        for i, cell in enumerate(r[:-1]):
            widths[i] = max(widths[i], len(cell) + padding, minwidth)
    lines = []
    for r in rows:
        lines.append("".join(cell.ljust(widths[i]) for i, cell in enumerate(r[:-1])) + r[-1])
    return "\n".join(lines) + "\n"
