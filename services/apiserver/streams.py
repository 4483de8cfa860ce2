"""Stream framing: Docker's 8-byte multiplexed frames, the hijacked (101 UPGRADED) response, and the
relay of a process's output to it."""

from __future__ import annotations

import array
import asyncio
import fcntl
import socket
import struct
import termios
import time
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from services.apiserver.stdin import DETACHED
from services.gen.skiff.daemon.v1 import LogStream

MULTIPLEXED = "application/vnd.docker.multiplexed-stream"
RAW = "application/vnd.docker.raw-stream"
STREAM_BYTE = {LogStream.STDOUT: 1, LogStream.STDERR: 2}
HEADERS_READ_WAIT = 0.2  # seconds a hijacked answer's first output waits for the client to read the headers


def frame(stream: LogStream, data: bytes) -> bytes:
    """[stream, 0, 0, 0, size (big endian uint32)] then the payload."""
    return struct.pack(">BxxxL", STREAM_BYTE.get(stream, 1), len(data)) + data


class HijackableHandler(RequestHandler):
    """aiohttp's connection handler, except that a hijacked connection survives the client's half-close."""

    hijacked = False

    def eof_received(self) -> bool:  # type: ignore[override]
        # True keeps the transport open (asyncio's contract); a plain HTTP connection closes as before.
        if self.hijacked and self._payload_parser is not None:
            # The client's stdin ended (services.apiserver.stdin reads it): the process sees its EOF.
            self._payload_parser.feed_eof()
        return self.hijacked


class HijackableServer(web.Server):
    def __call__(self) -> RequestHandler:
        return HijackableHandler(self, loop=self._loop, **self._kwargs)


class HijackableAppRunner(web.AppRunner):
    """An AppRunner whose connections are HijackableHandlers."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # Same object, one overridden method: aiohttp builds it with private arguments we do not repeat.
        server.__class__ = HijackableServer
        return server


class RawStreamResponse(web.StreamResponse):
    """No chunked encoding and no length: after the headers the connection carries the bare stream."""

    _length_check = False


async def hijack(request: web.Request, tty: bool) -> web.StreamResponse:
    """101 UPGRADED when the client asked for an upgrade (the CLI, docker-py), else a plain 200 stream."""
    upgrade = "upgrade" in request.headers.get("Connection", "").lower()
    response = RawStreamResponse(status=101 if upgrade else 200, reason="UPGRADED" if upgrade else "OK")
    response.content_type = RAW if tty else MULTIPLEXED
    if upgrade:
        response.headers["Connection"] = "Upgrade"
        response.headers["Upgrade"] = "tcp"
    # The stream ends with the connection: nothing else may follow on it.
    response.force_close()
    # Clients half-close their side when they send no stdin (the CLI does CloseWrite); asyncio closes
    # the whole transport then unless the protocol asks to keep it: this connection only, from here on.
    if isinstance(request.protocol, HijackableHandler):
        request.protocol.hijacked = True
    await response.prepare(request)
    # aiohttp would send the headers with the first output: alone now, as dockerd does. docker-py reads
    # the headers through a buffered file and then the bare socket: output that came in the same read
    # as the headers would be lost to it (a short exec's whole output, or its start's error).
    await response.write(b"")
    await _peer_has_read(request)
    return response


async def _peer_has_read(request: web.Request) -> None:
    """Until the client has read what was sent (a UNIX socket's send queue is what its peer has not read
    yet), for a moment at most: the first output then never lands in the read that took the headers."""
    sock = request.transport.get_extra_info("socket") if request.transport is not None else None
    if sock is None or sock.family != socket.AF_UNIX:
        return
    queued = array.array("i", [0])
    deadline = time.monotonic() + HEADERS_READ_WAIT
    while time.monotonic() < deadline:
        try:
            fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, queued)
        except OSError:
            return
        if queued[0] == 0:
            return
        await asyncio.sleep(0.001)


async def relay(response: web.StreamResponse, outputs: AsyncIterator[tuple[LogStream, bytes]], *, tty: bool,
                input_end: asyncio.Future[str] | None, end_on_input_end: bool) -> None:
    """Copies a process's output to the hijacked response until it ends, the client detaches
    (``input_end`` gives DETACHED), or (``end_on_input_end``: a terminal, or no output asked for)
    the client's input ends, as dockerd's attach does; the process itself runs on."""

    async def copy() -> None:
        async for stream, data in outputs:
            await response.write(data if tty else frame(stream, data))

    copying = asyncio.ensure_future(copy())
    try:
        if input_end is not None:
            await asyncio.wait({copying, input_end}, return_when=asyncio.FIRST_COMPLETED)
            if not copying.done() and (input_end.result() == DETACHED or end_on_input_end):
                copying.cancel()
                await asyncio.wait({copying})
            if copying.cancelled():
                return
        await copying
    finally:
        copying.cancel()
