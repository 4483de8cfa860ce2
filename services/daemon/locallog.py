"""Reading dockerd's ``local`` log format (written by the shim's locallog): size-framed protobuf LogEntry
records, ``[uint32 size][LogEntry][uint32 size]`` big-endian.

Decoded by hand (a LogEntry has five fields); unknown fields are skipped as protobuf readers do.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.common.shimproto import rfc3339_nano
from services.gen.skiff.daemon.v1 import LogEntry, LogStream

# dockerd's reader refuses a record bigger than this (its maxMsgLen).
MAX_RECORD = 1_000_000
STREAMS = {"stdout": LogStream.STDOUT, "stderr": LogStream.STDERR}


class DecodeError(ValueError):
    pass


@dataclass(slots=True)
class Record:
    source: str = ""
    time_nano: int = 0
    line: bytes = b""
    partial: bool = False
    last: bool = False
    part_id: str = ""
    ordinal: int = 0


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise DecodeError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise DecodeError("varint too long")


def _fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, value) pairs: an int for varints, bytes for length-delimited; others skipped."""
    out: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            out.append((number, value))
        elif wire == 2:
            size, pos = _varint(data, pos)
            if pos + size > len(data):
                raise DecodeError("truncated field")
            out.append((number, data[pos:pos + size]))
            pos += size
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise DecodeError(f"unsupported wire type {wire}")
    if pos != len(data):
        raise DecodeError("truncated field")
    return out


def decode_entry(data: bytes) -> Record:
    record = Record()
    for number, value in _fields(data):
        if number == 1 and isinstance(value, bytes):
            record.source = value.decode("utf-8", "replace")
        elif number == 2 and isinstance(value, int):
            record.time_nano = value - (1 << 64) if value >= 1 << 63 else value
        elif number == 3 and isinstance(value, bytes):
            record.line = value
        elif number == 4 and isinstance(value, int):
            record.partial = bool(value)
        elif number == 5 and isinstance(value, bytes):
            for sub, item in _fields(value):
                if sub == 1 and isinstance(item, int):
                    record.last = bool(item)
                elif sub == 2 and isinstance(item, bytes):
                    record.part_id = item.decode("utf-8", "replace")
                elif sub == 3 and isinstance(item, int):
                    record.ordinal = item
    return record


def split(data: bytes) -> tuple[list[bytes], int]:
    """The whole frames' messages at the start of data and the bytes they take; a cut last frame waits.

    A frame whose two sizes differ (a corrupt file) ends the reading there, as dockerd's decoder stops."""
    messages: list[bytes] = []
    pos = 0
    while pos + 4 <= len(data):
        size = int.from_bytes(data[pos:pos + 4], "big")
        if size > MAX_RECORD:
            break
        end = pos + 4 + size
        if end + 4 > len(data):
            break
        if int.from_bytes(data[end:end + 4], "big") != size:
            break
        messages.append(data[pos + 4:end])
        pos = end + 4
    return messages, pos


def parse(messages: list[bytes]) -> list[LogEntry]:
    """Docker's log messages: a whole line (and a cut line's last piece) ends with its newline."""
    entries: list[LogEntry] = []
    for message in messages:
        try:
            record = decode_entry(message)
        except DecodeError:
            continue
        line = record.line if record.partial and not record.last else record.line + b"\n"
        entries.append(LogEntry(stream=STREAMS.get(record.source, LogStream.STDOUT), data=line,
                                time=rfc3339_nano(record.time_nano)))
    return entries

