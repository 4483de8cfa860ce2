"""Reading the log the shim writes (rotated as path, path.1, path.2 … or path.N.gz when compressed), in
json-file's format or the local driver's (a Codec each), whole or followed across rotations."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from services.daemon import locallog
from services.gen.skiff.daemon.v1 import LogEntry, LogStream

STREAMS = {"stdout": LogStream.STDOUT, "stderr": LogStream.STDERR}
# dockerd's ErrReadLogsNotSupported (a 501): the none driver keeps nothing to read.
NOT_READABLE = "configured logging driver does not support reading"


@dataclass(frozen=True, slots=True)
class Codec:
    """A log format: ``split`` takes the whole records at the start of some bytes (and how many bytes
    they are; a record still being written waits), ``parse`` makes them entries."""

    split: Callable[[bytes], tuple[list[bytes], int]]
    parse: Callable[[list[bytes]], list[LogEntry]]


def _split_lines(data: bytes) -> tuple[list[bytes], int]:
    end = data.rfind(b"\n") + 1
    return data[:end].splitlines(), end


def _parse_json(lines: list[bytes]) -> list[LogEntry]:
    entries: list[LogEntry] = []
    for line in lines:
        try:
            obj = json.loads(line)
        except ValueError:
            continue  # a line cut by a crash mid-write: Docker skips it too
        entries.append(LogEntry(stream=STREAMS.get(obj.get("stream", ""), LogStream.STDOUT),
                                data=obj.get("log", "").encode(), time=obj.get("time", "")))
    return entries


JSON_FILE = Codec(_split_lines, _parse_json)
LOCAL = Codec(locallog.split, locallog.parse)


def codec_of(driver: str) -> Codec:
    """The format a driver's file is in (none's attach feed is json-file's)."""
    return LOCAL if driver == "local" else JSON_FILE


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


def _read_rotated(name: str) -> bytes:
    try:
        if name.endswith(".gz"):
            with gzip.open(name, "rb") as f:
                return f.read()
        with open(name, "rb") as f:
            return f.read()
    except (FileNotFoundError, EOFError, OSError, zlib.error):
        return b""  # rotated away meanwhile, or a compression the shim left unfinished


def rotated_files(path: str) -> list[str]:
    """path.1 … path.N (or their .gz), newest first; path.N and path.N.gz both there is a compression
    in progress: the plain one is whole."""
    names: list[str] = []
    index = 1
    while len(names) < 1000:
        plain = f"{path}.{index}"
        if os.path.exists(plain):
            names.append(plain)
        elif os.path.exists(plain + ".gz"):
            names.append(plain + ".gz")
        else:
            break
        index += 1
    return names


def read_all(path: str, codec: Codec = JSON_FILE) -> tuple[list[LogEntry], Cursor]:
    """Every entry, oldest first, and the cursor at the end of the live file (blocking)."""
    records: list[bytes] = []
    for old in reversed(rotated_files(path)):
        records += codec.split(_read_rotated(old))[0]
    cursor = end_cursor(path, codec)
    try:
        with open(path, "rb") as f:
            live, offset = codec.split(f.read())
    except FileNotFoundError:
        live, offset = [], 0
    # Only up to where the cursor was taken, so that a follower reads the rest exactly once.
    if cursor.inode and offset > cursor.offset:
        live, offset = codec.split(_head(path, cursor.offset))
    cursor.offset = offset
    return codec.parse(records + live), cursor


def _head(path: str, size: int) -> bytes:
    with open(path, "rb") as f:
        return f.read(size)


def end_cursor(path: str, codec: Codec = JSON_FILE) -> Cursor:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return Cursor()
    return Cursor(st.st_ino, _complete_end(path, st.st_size, codec))


def _complete_end(path: str, size: int, codec: Codec) -> int:
    """Where the last whole record ends: what follows is a record the shim is still writing."""
    if size == 0:
        return 0
    with open(path, "rb") as f:
        if codec is JSON_FILE:
            f.seek(max(0, size - 65536))
            tail = f.read(size - f.tell())
            return size - (len(tail) - (tail.rfind(b"\n") + 1))
        # local: the last frame's trailing size points at its leading one; if they agree it is whole.
        if size >= 8:
            f.seek(size - 4)
            length = int.from_bytes(f.read(4), "big")
            start = size - 8 - length
            if start >= 0:
                f.seek(start)
                if int.from_bytes(f.read(4), "big") == length:
                    return size
        f.seek(0)
        return codec.split(f.read(size))[1]


def _chain(path: str) -> list[tuple[int, int]]:
    """(inode, fd) of every uncompressed file, oldest first, opened as one consistent view (retried if a
    rotation moved the files while they were being opened). Compressed ones are new files: never a
    follower's."""
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

    A file already gone (rotated past max-file, or compressed) is older than every plain file left, so
    the oldest of those follows it.
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


def _read_fd(fd: int, offset: int, codec: Codec) -> tuple[list[bytes], int]:
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
    records, used = codec.split(b"".join(chunks))
    return records, offset + used


def read_new(path: str, cursor: Cursor, codec: Codec = JSON_FILE) -> list[LogEntry]:
    """Entries written since the cursor, which moves on; across rotations, file after file, none skipped
    while the file the cursor holds is open (the shim writes only the live file, never a rotated one)."""
    records: list[bytes] = []
    if cursor.fd < 0 and not _open_after(path, cursor, current=True):
        return []
    for _ in range(1000):
        read, cursor.offset = _read_fd(cursor.fd, cursor.offset, codec)
        records += read
        try:
            live = os.stat(path).st_ino
        except FileNotFoundError:
            break
        if live == cursor.inode:
            break
        # Rotated: the shim closed our file before renaming it, so what is left in it was just read.
        read, cursor.offset = _read_fd(cursor.fd, cursor.offset, codec)
        records += read
        if not _open_after(path, cursor, current=False):
            break
    return codec.parse(records)


def remove_feed(path: object) -> None:
    """The none driver's attach feed goes with its container."""
    for name in (str(path), f"{path}.1"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
