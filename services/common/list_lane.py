"""The container list's own lane between apiserver and daemon: ``GET /containers/json`` without gRPC.

A list of 50 cost ~1.5 ms of CPU in grpclib alone (h2's state machine, both sides, per call) beside
the ~1 ms its answer takes to make: more than dockerd's whole answer. So the daemon also answers the
list on ``<run>/daemon-list.sock`` (root's, 0600, as daemon.sock), one call at a time per connection:

    request:  4-byte big-endian length, then a ``skiff.daemon.v1.ListRequest`` (protobuf)
    answer:   1 byte (0: the list follows, 1: an error's text follows), 4-byte length, the bytes

The list comes as rows with the generation they were made at (services/dockermodel/list_rows.py),
which the apiserver keeps and answers from until the daemon's generation moves
(services/common/list_generation.py). The lane is only a shortcut: the apiserver asks gRPC's
``Containers.ListSummaries`` whenever the lane has no answer (no socket, a daemon restarting, an
error, which gRPC then reports as its kind).
"""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

OK, FAILED = 0, 1
_LENGTH = struct.Struct(">I")
_ANSWER = struct.Struct(">BI")
MAX_REQUEST = 1 << 20


def lane_path(daemon_socket: Path) -> Path:
    """Beside the daemon's gRPC socket."""
    return daemon_socket.with_name("daemon-list.sock")


def request_frame(request: bytes) -> bytes:
    return _LENGTH.pack(len(request)) + request


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """The next request's bytes; IncompleteReadError at the connection's end."""
    (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    if length > MAX_REQUEST:
        raise ValueError(f"list request of {length} bytes")
    return await reader.readexactly(length)


def answer_frame(kind: int, body: bytes) -> bytes:
    return _ANSWER.pack(kind, len(body)) + body


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    kind, length = _ANSWER.unpack(await reader.readexactly(_ANSWER.size))
    return kind, await reader.readexactly(length)
