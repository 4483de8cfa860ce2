"""Stream framing: Docker's 8-byte multiplexed frames, and the hijacked (101 UPGRADED) response."""

from __future__ import annotations

import struct

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from services.gen.skiff.daemon.v1 import LogStream

MULTIPLEXED = "application/vnd.docker.multiplexed-stream"
RAW = "application/vnd.docker.raw-stream"
STREAM_BYTE = {LogStream.STDOUT: 1, LogStream.STDERR: 2}


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
    return response
