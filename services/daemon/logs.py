"""Reading the json-file log that the shim writes (rotated as path, path.1, path.2 …)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from services.gen.skiff.daemon.v1 import LogEntry, LogStream

STREAMS = {"stdout": LogStream.STDOUT, "stderr": LogStream.STDERR}


@dataclass(slots=True)
class Cursor:
    """Where a follower is in the live file; a new inode means the file was rotated under it."""

    inode: int = 0
    offset: int = 0


def _parse(lines: list[bytes]) -> list[LogEntry]:
    entries: list[LogEntry] = []
    for line in lines:
        try:
            obj = json.loads(line)
        except ValueError:
            continue  # a line cut by a crash mid-write: Docker skips it too
        entries.append(LogEntry(stream=STREAMS.get(obj.get("stream", ""), LogStream.STDOUT),
                                data=obj.get("log", "").encode(), time=obj.get("time", "")))
    return entries


def _read_from(path: str, offset: int) -> tuple[list[bytes], int]:
    """Complete lines from offset on; a partial last line waits for the next read."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1
    return data[:end].splitlines(), offset + end


def read_all(path: str) -> tuple[list[LogEntry], Cursor]:
    """Every entry, oldest first, and the cursor at the end of the live file (blocking)."""
    rotated: list[str] = []
    index = 1
    while os.path.exists(f"{path}.{index}"):
        rotated.append(f"{path}.{index}")
        index += 1
    lines: list[bytes] = []
    for old in reversed(rotated):
        lines += _read_from(old, 0)[0]
    cursor = end_cursor(path)
    live, offset = _read_from(path, 0)
    # Only up to where the cursor was taken, so that a follower reads the rest exactly once.
    cursor.offset = min(offset, cursor.offset) if cursor.inode else offset
    return _parse(lines + live), cursor


def end_cursor(path: str) -> Cursor:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return Cursor()
    return Cursor(st.st_ino, st.st_size - _partial_tail(path, st.st_size))


def _partial_tail(path: str, size: int) -> int:
    """Bytes after the last newline: a line the shim is still writing."""
    if size == 0:
        return 0
    with open(path, "rb") as f:
        f.seek(max(0, size - 65536))
        tail = f.read()
    return len(tail) - (tail.rfind(b"\n") + 1)


def read_new(path: str, cursor: Cursor) -> list[LogEntry]:
    """Entries written since the cursor, which moves on; after a rotation, the new file from its start."""
    try:
        inode = os.stat(path).st_ino
    except FileNotFoundError:
        return []
    entries: list[LogEntry] = []
    if cursor.inode and inode != cursor.inode:
        # The file we followed is now path.1: finish it, then start the new one.
        lines, _ = _read_from(f"{path}.1", cursor.offset)
        entries += _parse(lines)
        cursor.offset = 0
    cursor.inode = inode
    lines, cursor.offset = _read_from(path, cursor.offset)
    return entries + _parse(lines)
