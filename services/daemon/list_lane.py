"""The daemon's end of the list lane (services/common/list_lane.py): the same answer as gRPC's
``Containers.ListSummaries`` (``ContainersService.render_list``), on ``<run>/daemon-list.sock``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path

import structlog

from services.common.list_lane import FAILED, OK, answer_frame, lane_path, read_request
from services.common.service import Listener, listen_unix
from services.gen.skiff.daemon.v1 import ListRequest

log = structlog.get_logger("daemon")


class ListLane:
    def __init__(self, render: Callable[[ListRequest], bytes]) -> None:
        self._render = render
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

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections.add(writer)
        try:
            while True:
                data = await read_request(reader)
                try:
                    frame = answer_frame(OK, self._render(ListRequest().parse(data)))
                except Exception as exc:  # noqa: BLE001 - told to the apiserver, which asks gRPC instead
                    frame = answer_frame(FAILED, str(exc).encode())
                writer.write(frame)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            self._connections.discard(writer)
            writer.close()
