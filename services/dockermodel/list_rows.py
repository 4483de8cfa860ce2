"""GET /containers/json's entries as rows: what the daemon sends over the list lane and the apiserver
keeps between changes (apiserver/list_lane.py), so that only the part that moves with time is made
at each call.

A row is ``(head, prefix, since, postfix, tail)``: the entry's JSON up to Status's value (State
included), Status as :data:`services.dockermodel.render.StatusParts`, and the JSON after Status's
value. Heads and tails are ``json.dumps`` output (ASCII, control characters escaped), so the wire
form separates fields and rows with ASCII control characters and splits without parsing JSON.
"""

from __future__ import annotations

import json

from services.dockermodel.render import status_at
from services.dockermodel.times import human_duration_next

Row = tuple[str, str, float | None, str, str]

_FIELD, _ROW = "\x1f", "\x1e"


def render_rows(rows: list[Row], now: float) -> tuple[bytes, float]:
    """The list's JSON at ``now`` (a UNIX time), and the time until which that JSON stays true."""
    parts = []
    until = float("inf")
    for head, prefix, since, postfix, tail in rows:
        parts.append(f"{head}{json.dumps(status_at((prefix, since, postfix), now))}{tail}")
        if since is not None:
            until = min(until, since + human_duration_next(now - since))
    return f"[{','.join(parts)}]".encode(), until


def encode_rows(generation: int, rows: list[Row]) -> bytes:
    """The lane's answer: the generation the rows were made at (common/list_generation.py), then the rows."""
    lines = [str(generation)]
    for head, prefix, since, postfix, tail in rows:
        lines.append(_FIELD.join((head, prefix, "" if since is None else repr(since), postfix, tail)))
    return _ROW.join(lines).encode()


def decode_rows(data: bytes) -> tuple[int, list[Row]]:
    """:func:`encode_rows` undone; ValueError for anything else."""
    first, *lines = data.decode().split(_ROW)
    rows: list[Row] = []
    for line in lines:
        head, prefix, since, postfix, tail = line.split(_FIELD)
        rows.append((head, prefix, float(since) if since else None, postfix, tail))
    return int(first), rows
