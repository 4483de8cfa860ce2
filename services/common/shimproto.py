"""The shim's wire protocol, the contract between highlevel and its shims (proto/skiff/shim/v1/README.md).

Each frame is a 5-byte header, ``kind`` (1 byte) and ``length`` (4 bytes, big endian), then
``length`` bytes. Requests and replies are JSON objects; attached streams carry raw bytes so that
output never pays a base64 or JSON cost. Times on the wire are Docker's RFC 3339 with nanoseconds.
Stdlib only (``struct``, ``time``): the shim imports this on every launch and the highlevel runtime
shares it, so both ends agree by construction.
"""

from __future__ import annotations

import struct
import time

from services.common import jsonio

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

HEADER = struct.Struct(">BI")
MAX_FRAME = 16 * 1024 * 1024
# The zygote is started with this many spaces as its last argument: room for each forked shim to
# rewrite its command line as ``python -S -m services.shim STATE_DIR`` (ps, leak checks, operators).
ZYGOTE_TITLE_ROOM = 320


# Plain classes of constants, not enum: ``enum`` costs ~2 ms of import in every shim launch.
class FrameKind:
    JSON = 1  # a request (client → shim) or a reply/notice (shim → client)
    STDOUT = 2  # output bytes, shim → attached client
    STDERR = 3
    STDIN = 4  # input bytes, client → shim
    STDIN_CLOSE = 5  # client → shim: close the process's stdin (once)
    EOF = 6  # shim → client: the process's output has ended


class Op:
    STATE = "state"
    START = "start"
    WAIT = "wait"
    KILL = "kill"
    RESIZE = "resize"
    ATTACH = "attach"
    EXEC = "exec"
    CLOSE_STDIN = "close_stdin"
    PAUSE = "pause"
    RESUME = "resume"
    DELETE = "delete"
    SHUTDOWN = "shutdown"
    SUBSCRIBE = "subscribe"
    PIDS = "pids"
    UPDATE = "update"
    STATS = "stats"

    ALL = frozenset((STATE, START, WAIT, KILL, RESIZE, ATTACH, EXEC, CLOSE_STDIN, PAUSE, RESUME, DELETE, SHUTDOWN,
                     SUBSCRIBE, PIDS, UPDATE, STATS))


class ProcStatus:
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"


def rfc3339_nano(ns: int | None = None) -> str:
    """UTC time as Docker writes it: ``2006-01-02T15:04:05.999999999Z`` (always 9 digits)."""
    ns = time.time_ns() if ns is None else ns
    seconds, nanos = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos:09d}Z"


def encode(kind: int, payload: bytes) -> bytes:
    return HEADER.pack(kind, len(payload)) + payload


def encode_json(message: dict[str, Any]) -> bytes:
    return encode(FrameKind.JSON, jsonio.dumps(message).encode())


def decode_frames(buf: bytearray) -> list[tuple[int, bytes]]:
    """Takes every complete frame off the front of ``buf`` (in place)."""
    frames: list[tuple[int, bytes]] = []
    while len(buf) >= HEADER.size:
        kind, length = HEADER.unpack_from(buf)
        if length > MAX_FRAME:
            raise ValueError(f"shim frame of {length} bytes exceeds {MAX_FRAME}")
        end = HEADER.size + length
        if len(buf) < end:
            break
        frames.append((kind, bytes(buf[HEADER.size : end])))
        del buf[:end]
    return frames
