"""The apiserver's end of the list lane (services/common/list_lane.py): a few kept connections to
``<run>/daemon-list.sock``, and the lists the daemon last gave, kept by query until its records change.

A kept list is answered with no round trip while the daemon's generation (common/list_generation.py,
a memory read) is the one it was made at: only Status's text is made again, and only when one of
them reads differently by now ("Up 3 seconds" a second later). A kept list is also asked again after
``KEPT_FOR`` seconds whatever the generation says, so that a change the daemon failed to count
shows within that time. ``None`` whenever the lane cannot answer: the caller asks gRPC.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path

from services.common.list_generation import GenerationReader, generation_path
from services.common.list_lane import OK, lane_path, read_answer, request_frame
from services.dockermodel.list_rows import Row, decode_rows, render_rows
from services.gen.skiff.daemon.v1 import ListRequest

KEEP = 4  # idle connections kept: concurrent lists beyond it open (and then close) their own
TIMEOUT = 30.0
KEPT_FOR = 1.0  # seconds a kept list is trusted at most, even with the generation standing still
MAX_KEPT = 64  # queries kept (a client may vary its filters endlessly)

_Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@dataclass(slots=True)
class _Kept:
    generation: int
    rows: list[Row]
    expires: float  # time.monotonic()
    body: bytes
    until: float  # time.time(): the body's Status texts stand until then


class ListLane:
    def __init__(self, daemon_socket: Path) -> None:
        self.path = lane_path(daemon_socket)
        self.loop = asyncio.get_running_loop()
        self.generation = GenerationReader(generation_path(daemon_socket))
        self._idle: list[_Connection] = []
        self._kept: dict[Hashable, _Kept] = {}

    async def answer(self, key: Hashable, request: Callable[[], ListRequest]) -> bytes | None:
        """The list's JSON for the query ``key`` stands for (``request`` makes it when the daemon is asked)."""
        generation = self.generation.read()
        kept = self._kept.get(key)
        if kept is not None and kept.generation == generation and time.monotonic() < kept.expires:
            now = time.time()
            if now >= kept.until:
                kept.body, kept.until = render_rows(kept.rows, now)
            return kept.body
        data = await self.ask(request())
        if data is None:
            return None
        try:
            made_at, rows = decode_rows(data)
        except ValueError:
            return None
        body, until = render_rows(rows, time.time())
        if len(self._kept) >= MAX_KEPT:
            self._kept.clear()
        self._kept[key] = _Kept(made_at, rows, time.monotonic() + KEPT_FOR, body, until)
        return body

    async def ask(self, request: ListRequest) -> bytes | None:
        """The daemon's answer (dockermodel/list_rows.py's encoding), or None."""
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
        self.generation.close()


_lanes: dict[Path, ListLane] = {}


def lane(daemon_socket: Path) -> ListLane:
    """The lane to this daemon (one per socket and event loop)."""
    found = _lanes.get(daemon_socket)
    if found is None or found.loop is not asyncio.get_running_loop():
        if found is not None:
            found.close()
        found = _lanes[daemon_socket] = ListLane(daemon_socket)
    return found


async def answer(daemon_socket: Path, key: Hashable, request: Callable[[], ListRequest]) -> bytes | None:
    """The list's JSON, kept or from the daemon's lane, or None (then gRPC's ListSummaries answers)."""
    return await lane(daemon_socket).answer(key, request)
