"""The apiserver's end of the list lane (services/common/list_lane.py): a few kept connections to
``<run>/daemon-list.sock``; ``None`` whenever the lane cannot answer, and the caller asks gRPC."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from services.common.list_lane import OK, lane_path, read_answer, request_frame
from services.gen.skiff.daemon.v1 import ListRequest

KEEP = 4  # idle connections kept: concurrent lists beyond it open (and then close) their own
TIMEOUT = 30.0

_Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class ListLane:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.loop = asyncio.get_running_loop()
        self._idle: list[_Connection] = []

    async def ask(self, request: ListRequest) -> bytes | None:
        connection: _Connection | None = None
        try:
            async with asyncio.timeout(TIMEOUT):
                connection = self._idle.pop() if self._idle else await asyncio.open_unix_connection(str(self.path))
                reader, writer = connection
                writer.write(request_frame(bytes(request)))
                kind, body = await read_answer(reader)
        except (TimeoutError, OSError, EOFError, asyncio.IncompleteReadError):
            if connection is not None:
                connection[1].close()
            return None
        except BaseException:  # cancelled half-way: its answer would be the next caller's
            if connection is not None:
                connection[1].close()
            raise
        if len(self._idle) < KEEP:
            self._idle.append(connection)
        else:
            connection[1].close()
        return body if kind == OK else None

    def close(self) -> None:
        for _, writer in self._idle:
            with contextlib.suppress(Exception):
                writer.close()
        self._idle.clear()


_lanes: dict[Path, ListLane] = {}


async def ask(daemon_socket: Path, request: ListRequest) -> bytes | None:
    """The list's JSON from the daemon's lane, or None (then gRPC's ListSummaries answers)."""
    path = lane_path(daemon_socket)
    lane = _lanes.get(path)
    if lane is None or lane.loop is not asyncio.get_running_loop():
        if lane is not None:
            lane.close()
        lane = _lanes[path] = ListLane(path)
    return await lane.ask(request)
