"""Reading the json-file log that the shim writes (rotated as path, path.1, path.2 …)."""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass

from services.gen.skiff.daemon.v1 import LogEntry, LogStream

STREAMS = {"stdout": LogStream.STDOUT, "stderr": LogStream.STDERR}


@dataclass(slots=True)
class Cursor:
    """Where a follower is: the file it reads (held open, so a rotation cannot take it away) and the offset.

    ``inode`` 0 means nothing was read yet: the follower starts at the oldest file.
    """

    inode: int = 0
    offset: int = 0
    fd: int = -1

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


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


def _chain(path: str) -> list[tuple[int, int]]:
    """(inode, fd) of every file, oldest first, opened as one consistent view (retried if a rotation
    moved the files while they were being opened)."""
    for _ in range(20):
        names = [path]
        while len(names) < 1000 and os.path.exists(f"{path}.{len(names)}"):
            names.append(f"{path}.{len(names)}")
        names.reverse()
        opened: list[tuple[int, int]] = []
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC)
                opened.append((os.fstat(fd).st_ino, fd))
        try:
            stable = [os.stat(name).st_ino for name in names] == [inode for inode, _ in opened]
        except FileNotFoundError:
            stable = False
        if stable:
            return opened
        for _, fd in opened:
            os.close(fd)
    return []


def _open_after(path: str, cursor: Cursor, current: bool) -> bool:
    """Points the cursor at its own file (current) or at the one written after it; False if none is there.

    A file already gone (rotated past max-file) is older than every file left, so the oldest one follows it.
    """
    chain = _chain(path)
    inodes = [inode for inode, _ in chain]
    if cursor.inode in inodes:
        index = inodes.index(cursor.inode) + (0 if current else 1)
    else:
        index = 0
        cursor.offset = 0
    chosen = chain[index] if index < len(chain) else None
    for _inode, fd in chain:
        if chosen is None or fd != chosen[1]:
            os.close(fd)
    if chosen is None:
        return False
    if chosen[0] != cursor.inode:
        cursor.offset = 0
    cursor.close()
    cursor.inode, cursor.fd = chosen
    return True


def _read_fd(fd: int, offset: int) -> tuple[list[bytes], int]:
    if os.fstat(fd).st_size < offset:
        offset = 0  # truncated in place (max-file 1)
    chunks: list[bytes] = []
    position = offset
    while True:
        chunk = os.pread(fd, 1 << 20, position)
        if not chunk:
            break
        chunks.append(chunk)
        position += len(chunk)
    data = b"".join(chunks)
    end = data.rfind(b"\n") + 1
    return data[:end].splitlines(), offset + end


def read_new(path: str, cursor: Cursor) -> list[LogEntry]:
    """Entries written since the cursor, which moves on; across rotations, file after file, none skipped
    while the file the cursor holds is open (the shim writes only the live file, never a rotated one)."""
    lines: list[bytes] = []
    if cursor.fd < 0 and not _open_after(path, cursor, current=True):
        return []
    for _ in range(1000):
        read, cursor.offset = _read_fd(cursor.fd, cursor.offset)
        lines += read
        try:
            live = os.stat(path).st_ino
        except FileNotFoundError:
            break
        if live == cursor.inode:
            break
        # Rotated: the shim closed our file before renaming it, so what is left in it was just read.
        read, cursor.offset = _read_fd(cursor.fd, cursor.offset)
        lines += read
        if not _open_after(path, cursor, current=False):
            break
    return _parse(lines)
