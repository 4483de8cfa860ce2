"""dockerd's ``local`` log driver's file format, written by the shim.

Each record is a protobuf ``LogEntry`` framed by its size, as a big-endian uint32 before and after it
(the one after lets a reader walk back from the end for ``--tail``)::

    message LogEntry { string source = 1; int64 time_nano = 2; bytes line = 3; bool partial = 4;
                       PartialLogEntryMetadata partial_log_metadata = 5; }
    message PartialLogEntryMetadata { bool last = 1; string id = 2; int32 ordinal = 3; }

The line has no newline. A line longer than 16 KiB is cut into partial records sharing an id, ordinals
from 1, the last one marked ``last``; a stream's unterminated end is a partial record not marked last
(dockerd's copier). Encoded by hand: a protobuf library is too heavy for a per-container process.
"""

from __future__ import annotations

import os
import time

from services.common.shimproto import rfc3339_nano
from services.shim.rotation import MAX_LINE, RotatingFile

DEFAULT_MAX_SIZE = 20 * 1024 * 1024
DEFAULT_MAX_FILE = 5


def _varint(value: int) -> bytes:
    value &= 0xFFFFFFFFFFFFFFFF  # negative int64/int32 as protobuf's ten-byte two's complement
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _bytes_field(tag: int, data: bytes) -> bytes:
    return bytes((tag,)) + _varint(len(data)) + data


def encode_entry(source: str, time_nano: int, line: bytes, partial: tuple[str, int, bool] | None = None) -> bytes:
    """One LogEntry's protobuf bytes (proto3: fields at their zero value are left out).

    partial: (id, ordinal, last) of a cut line's piece."""
    out = bytearray()
    if source:
        out += _bytes_field(0x0A, source.encode())
    if time_nano:
        out += b"\x10" + _varint(time_nano)
    if line:
        out += _bytes_field(0x1A, line)
    if partial is not None:
        part_id, ordinal, last = partial
        meta = bytearray()
        if last:
            meta += b"\x08\x01"
        if part_id:
            meta += _bytes_field(0x12, part_id.encode())
        if ordinal:
            meta += b"\x18" + _varint(ordinal)
        out += b"\x20\x01" + _bytes_field(0x2A, bytes(meta))
    return bytes(out)


def frame(message: bytes) -> bytes:
    size = len(message).to_bytes(4, "big")
    return size + message + size


class LocalLog:
    """The local driver's writer: the same line splitting as json-file, framed protobuf records."""

    __slots__ = ("file", "partial", "pieces")

    def __init__(self, path: str, max_size: int = DEFAULT_MAX_SIZE, max_file: int = DEFAULT_MAX_FILE,
                 compress: bool = True) -> None:
        self.file = RotatingFile(path, max_size, max_file, compress)
        self.partial: dict[str, bytes] = {"stdout": b"", "stderr": b""}
        # Per stream, the line being cut into pieces: (id, next ordinal, its first piece's time).
        self.pieces: dict[str, tuple[str, int, int] | None] = {"stdout": None, "stderr": None}

    def write(self, stream: str, data: bytes) -> None:
        pending = self.partial[stream] + data
        records: list[bytes] = []
        now = time.time_ns()
        while True:
            cut = pending.find(b"\n")
            if 0 <= cut < MAX_LINE:
                records.append(self._record(stream, pending[:cut], now, last=True))
                pending = pending[cut + 1:]
            elif len(pending) >= MAX_LINE:
                records.append(self._record(stream, pending[:MAX_LINE], now, last=False))
                pending = pending[MAX_LINE:]
            else:
                break
        self.partial[stream] = pending
        if records:
            self.file.append(records, rfc3339_nano(now))

    def _record(self, stream: str, line: bytes, now: int, last: bool) -> bytes:
        """A whole line (last, nothing cut before it), or a piece of a cut line."""
        piece = self.pieces[stream]
        if piece is None and last:
            return frame(encode_entry(stream, now, line))
        if piece is None:
            piece = (os.urandom(32).hex(), 1, now)
        part_id, ordinal, first = piece
        self.pieces[stream] = None if last else (part_id, ordinal + 1, first)
        return frame(encode_entry(stream, first, line, (part_id, ordinal, last)))

    def flush(self, stream: str) -> None:
        """The stream ended: its unterminated end is a partial record, not marked last (dockerd's copier)."""
        if self.partial[stream]:
            now = time.time_ns()
            record = self._record(stream, self.partial[stream], now, last=False)
            self.file.append([record], rfc3339_nano(now))
            self.partial[stream] = b""
        self.pieces[stream] = None

    def close(self) -> None:
        for stream in self.partial:
            self.flush(stream)
        self.file.close()
