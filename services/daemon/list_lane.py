"""The daemon's end of the list lane (services/common/list_lane.py), on ``<run>/daemon-list.sock``: the
list as rows with the generation they were made at (dockermodel/list_rows.py); the apiserver keeps
them until that generation moves (common/list_generation.py: the daemon bumps it at every change of
its records, ``ContainerRecords.on_change``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path

from services.common.list_generation import Generation
from services.common.list_lane import FAILED, OK, answer_frame, lane_path, read_request
from services.common.service import Listener, listen_unix
from services.dockermodel.list_rows import Row, encode_rows
from services.gen.skiff.daemon.v1 import ListRequest


class ListLane:
    def __init__(self, rows: Callable[[ListRequest], list[Row]], generation: Generation) -> None:
        self._rows = rows
        self.generation = generation
        self._server: asyncio.AbstractServer | None = None
        self._listener: Listener | None = None
        self._connections: set[asyncio.StreamWriter] = set()

    async def start(self, daemon_socket: Path) -> None:
        self._listener = listen_unix(lane_path(daemon_socket))
        self._server = await asyncio.start_unix_server(self._serve, sock=self._listener.sock)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._connections):  # the server's close leaves open connections open
                writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
        if self._listener is not None:
            self._listener.close()

    def answer(self, data: bytes) -> bytes:
        """A request's answer frame: the rows and the generation read with them (no change can come
        between the two: both on the event loop, with no await)."""
        try:
            return answer_frame(OK, encode_rows(self.generation.value, self._rows(ListRequest().parse(data))))
        except Exception as exc:  # noqa: BLE001 - told to the apiserver, which asks gRPC instead
            return answer_frame(FAILED, str(exc).encode())

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections.add(writer)
        try:
            while True:
                writer.write(self.answer(await read_request(reader)))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            self._connections.discard(writer)
            writer.close()
