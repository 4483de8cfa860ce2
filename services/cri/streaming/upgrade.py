"""The HTTP upgrade of a streaming request to a SPDY/3.1 session, as kubelet's streaming server
answers it (apimachinery's httpstream): the subprotocol negotiated through
``X-Stream-Protocol-Version`` in the server's order of preference, then ``101 Switching Protocols``
and the connection's bytes taken over by the SPDY session."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiohttp import web

from services.cri.streaming.spdy import SpdyConnection, Stream

PROTOCOL_HEADER = "X-Stream-Protocol-Version"
SPDY = "SPDY/3.1"
STREAM_CREATION_TIMEOUT = 30.0  # kubelet's: the client opens its streams right after the upgrade


class RawResponse(web.StreamResponse):
    """After the headers the connection carries the session's frames: no length, no chunking."""

    _length_check = False


class _Feed:
    """aiohttp's payload-parser protocol (what its websocket reader implements) into the session."""

    def __init__(self, conn: SpdyConnection) -> None:
        self.conn = conn

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self.conn.feed(bytes(data))
        return False, b""

    def feed_eof(self) -> None:
        self.conn.feed_eof()


@dataclass(slots=True)
class Session:
    response: web.StreamResponse
    conn: SpdyConnection
    protocol: str
    arrived: asyncio.Queue[Stream] = field(default_factory=asyncio.Queue)

    async def close(self) -> None:
        await self.conn.close()


def negotiate(request: web.Request, supported: tuple[str, ...]) -> str | None:
    """The first of ``supported`` the client offers; "" when it offers none (the oldest clients)."""
    offered = [p.strip() for value in request.headers.getall(PROTOCOL_HEADER, []) for p in value.split(",")]
    offered = [p for p in offered if p]
    if not offered:
        return ""
    for protocol in supported:
        if protocol in offered:
            return protocol
    return None


async def upgrade(request: web.Request, supported: tuple[str, ...]) -> Session | web.Response:
    """The session, or the error answer (400 not an upgrade to SPDY/3.1, 403 no common protocol)."""
    if "upgrade" not in request.headers.get("Connection", "").lower() or \
            request.headers.get("Upgrade", "").lower() != SPDY.lower():
        return web.Response(status=400, text=f"unable to upgrade: missing upgrade headers in request: "
                                             f"Connection and Upgrade: {SPDY} are required\n")
    protocol = negotiate(request, supported)
    if protocol is None:
        return web.Response(status=403, text=(
            f"unable to upgrade: unable to negotiate protocol: client supports "
            f"{request.headers.getall(PROTOCOL_HEADER, [])}, server supports {list(supported)}\n"))
    protocol_handler = request.protocol
    if protocol_handler is None or not hasattr(protocol_handler, "set_parser"):
        return web.Response(status=500, text="unable to upgrade: the connection cannot be taken over\n")
    response = RawResponse(status=101, reason="Switching Protocols")
    response.headers["Connection"] = "Upgrade"
    response.headers["Upgrade"] = SPDY
    if protocol:
        response.headers[PROTOCOL_HEADER] = protocol
    response.force_close()
    prepared = asyncio.Event()

    async def write(frame: bytes) -> None:
        await prepared.wait()
        await response.write(frame)

    arrived: asyncio.Queue[Stream] = asyncio.Queue()
    conn = SpdyConnection(write, arrived.put_nowait)
    protocol_handler.set_parser(_Feed(conn))  # type: ignore[arg-type]
    await response.prepare(request)
    prepared.set()
    return Session(response, conn, protocol, arrived)
