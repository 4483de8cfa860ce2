"""SPDY/3.1 framing, the server end: what kubelet's streaming protocols (remotecommand's
``v4.channel.k8s.io`` and ``portforward.k8s.io``) run over after an HTTP ``Upgrade: SPDY/3.1``.

Only what those protocols use (the spec: "SPDY Protocol - Draft 3.1"): the client opens streams
(SYN_STREAM with a header block), the server answers each with an empty SYN_REPLY; DATA frames
carry bytes both ways, a FIN flag half-closes a stream, RST_STREAM ends it; PING is echoed;
GOAWAY ends the session. Header blocks are zlib-compressed with the spec's dictionary, one
compression context per direction for the whole session. No flow control: client-go's spdystream
sends no WINDOW_UPDATE and honours none (received ones are ignored).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import struct
import zlib
from collections.abc import Awaitable, Callable

VERSION = 3
SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE = 1, 2, 3, 4, 6, 7, 8, 9
FLAG_FIN = 0x01
RST_CANCEL = 5
MAX_DATA = 32 * 1024  # bytes per DATA frame we send
MAX_FRAME = 16 * 1024 * 1024 - 1  # the 24-bit length field
WRITE_BACKLOG = 256 * 1024  # bytes queued before a stream's write waits
CLOSE_LINGER = 5.0  # seconds a closing session waits for the client to close its side

# The header compression dictionary of SPDY/3 (the spec's section 2.6.10.1): length-prefixed words,
# then a tail of bare text.
_WORDS = (
    "options head post put delete trace accept accept-charset accept-encoding accept-language "
    "accept-ranges age allow authorization cache-control connection content-base content-encoding "
    "content-language content-length content-location content-md5 content-range content-type date etag "
    "expect expires from host if-match if-modified-since if-none-match if-range if-unmodified-since "
    "last-modified location max-forwards pragma proxy-authenticate proxy-authorization range referer "
    "retry-after server te trailer transfer-encoding upgrade user-agent vary via warning www-authenticate "
    "method get status|200 OK|version HTTP/1.1 url public set-cookie keep-alive origin"
)
_TAIL = (
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized"
    "403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service Unavailable"
    "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT"
    "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,"
    "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
)


def _words() -> list[str]:
    """The dictionary's words, split on spaces except ``|200 OK|``, the one word holding a space."""
    head, _, rest = _WORDS.partition("|200 OK|")
    return [*head.split(), "200 OK", *rest.split()]


DICTIONARY = b"".join(struct.pack(">I", len(w)) + w.encode() for w in _words()) + _TAIL.encode()


class ProtocolError(Exception):
    """The peer broke the framing; the session ends."""


def encode_headers(headers: dict[str, str]) -> bytes:
    out = bytearray(struct.pack(">I", len(headers)))
    for name, value in headers.items():
        n, v = name.lower().encode(), value.encode()
        out += struct.pack(">I", len(n)) + n + struct.pack(">I", len(v)) + v
    return bytes(out)


def decode_headers(block: bytes) -> dict[str, str]:
    """Names lowercased; a name given several values (NUL-separated) keeps the first."""
    try:
        (count,) = struct.unpack_from(">I", block, 0)
        pos, out = 4, {}
        for _ in range(count):
            (n,) = struct.unpack_from(">I", block, pos)
            name = block[pos + 4:pos + 4 + n].decode().lower()
            pos += 4 + n
            (v,) = struct.unpack_from(">I", block, pos)
            value = block[pos + 4:pos + 4 + v].decode()
            pos += 4 + v
            out.setdefault(name, value.split("\0", 1)[0])
        return out
    except (struct.error, UnicodeDecodeError) as exc:
        raise ProtocolError(f"bad header block: {exc}") from None


class Stream:
    """One client-opened stream: its headers, the bytes the client sent, our writes."""

    def __init__(self, conn: SpdyConnection, stream_id: int, headers: dict[str, str]) -> None:
        self.conn = conn
        self.id = stream_id
        self.headers = headers
        self._incoming: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.remote_closed = False
        self.local_closed = False

    def _receive(self, data: bytes, fin: bool) -> None:
        if self.remote_closed:
            return
        if data:
            self._incoming.put_nowait(data)
        if fin:
            self.remote_closed = True
            self._incoming.put_nowait(None)

    async def read(self) -> bytes:
        """The next bytes the client sent; b"" once it half-closed the stream (or the session ended)."""
        item = await self._incoming.get()
        if item is None:
            self._incoming.put_nowait(None)  # every later read sees the end too
            return b""
        return item

    async def write(self, data: bytes) -> None:
        if self.local_closed:
            raise ConnectionResetError(f"stream {self.id} is closed")
        for start in range(0, len(data), MAX_DATA):
            await self.conn.send_data(self.id, data[start:start + MAX_DATA], fin=False)

    async def close(self) -> None:
        """Half-close: an empty DATA frame with FIN."""
        if not self.local_closed:
            self.local_closed = True
            await self.conn.send_data(self.id, b"", fin=True)

    def reset(self) -> None:
        if not (self.local_closed and self.remote_closed):
            self.local_closed = True
            self.conn.send_control(RST_STREAM, 0, struct.pack(">II", self.id, RST_CANCEL))
        self._receive(b"", fin=True)


class SpdyConnection:
    """A server session: ``feed`` it the bytes the client sends; frames go out through ``write``.

    ``on_stream`` is called with each stream the client opens, after its SYN_REPLY is queued."""

    def __init__(self, write: Callable[[bytes], Awaitable[None]], on_stream: Callable[[Stream], None]) -> None:
        self._write = write
        self._on_stream = on_stream
        self._buffer = bytearray()
        self._inflate = zlib.decompressobj(zdict=DICTIONARY)
        self._deflate = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY,
                                         zdict=DICTIONARY)
        self.streams: dict[int, Stream] = {}
        self._out: collections.deque[bytes] = collections.deque()
        self._out_bytes = 0
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self.closed = asyncio.Event()  # the client's side ended (EOF, GOAWAY) or the framing broke
        self._writer = asyncio.get_running_loop().create_task(self._write_loop())
        self._last_stream = 0

    # -- input ----------------------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        if self.closed.is_set():
            return
        self._buffer += data
        try:
            while len(self._buffer) >= 8:
                length = int.from_bytes(self._buffer[5:8], "big")
                if len(self._buffer) < 8 + length:
                    return
                head = bytes(self._buffer[:8])
                payload = bytes(self._buffer[8:8 + length])
                del self._buffer[:8 + length]
                self._frame(head, payload)
        except ProtocolError:
            self.feed_eof()

    def feed_eof(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        for stream in self.streams.values():
            stream._receive(b"", fin=True)

    def _frame(self, head: bytes, payload: bytes) -> None:
        flags = head[4]
        if not head[0] & 0x80:  # a DATA frame
            stream_id = int.from_bytes(head[0:4], "big") & 0x7FFFFFFF
            stream = self.streams.get(stream_id)
            if stream is not None:
                stream._receive(payload, bool(flags & FLAG_FIN))
            return
        version = int.from_bytes(head[0:2], "big") & 0x7FFF
        kind = int.from_bytes(head[2:4], "big")
        if version != VERSION:
            raise ProtocolError(f"SPDY version {version}")
        if kind == SYN_STREAM:
            stream_id = int.from_bytes(payload[0:4], "big") & 0x7FFFFFFF
            headers = decode_headers(self._inflate.decompress(payload[10:]))
            stream = Stream(self, stream_id, headers)
            self.streams[stream_id] = stream
            self._last_stream = max(self._last_stream, stream_id)
            self.send_control(SYN_REPLY, 0, struct.pack(">I", stream_id) + self._header_block({}))
            if flags & FLAG_FIN:
                stream._receive(b"", fin=True)
            self._on_stream(stream)
        elif kind == HEADERS:
            self._inflate.decompress(payload[4:])  # keeps the compression context in step
            stream = self.streams.get(int.from_bytes(payload[0:4], "big") & 0x7FFFFFFF)
            if stream is not None and flags & FLAG_FIN:
                stream._receive(b"", fin=True)
        elif kind == SYN_REPLY:
            self._inflate.decompress(payload[4:])
        elif kind == RST_STREAM:
            stream = self.streams.get(int.from_bytes(payload[0:4], "big") & 0x7FFFFFFF)
            if stream is not None:
                stream.local_closed = True
                stream._receive(b"", fin=True)
        elif kind == PING:
            (ping_id,) = struct.unpack(">I", payload[:4])
            if ping_id % 2 == 1:  # the client's (odd ids): echoed; ours would be even
                self.send_control(PING, 0, payload[:4])
        elif kind == GOAWAY:
            self.feed_eof()
        # SETTINGS, WINDOW_UPDATE and unknown kinds: nothing to do (no flow control, see above)

    # -- output ---------------------------------------------------------------------------------
    def _header_block(self, headers: dict[str, str]) -> bytes:
        return self._deflate.compress(encode_headers(headers)) + self._deflate.flush(zlib.Z_SYNC_FLUSH)

    def _queue(self, frame: bytes) -> None:
        self._out.append(frame)
        self._out_bytes += len(frame)
        self._drained.clear()
        self._wake.set()

    def send_control(self, kind: int, flags: int, payload: bytes) -> None:
        head = struct.pack(">HHI", 0x8000 | VERSION, kind, (flags << 24) | len(payload))
        self._queue(head + payload)

    async def send_data(self, stream_id: int, data: bytes, *, fin: bool) -> None:
        self._queue(struct.pack(">II", stream_id, ((FLAG_FIN if fin else 0) << 24) | len(data)) + data)
        while self._out_bytes > WRITE_BACKLOG and not self._writer.done():
            await self._drained.wait()

    async def _write_loop(self) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._out:
                    frame = self._out.popleft()
                    self._out_bytes -= len(frame)
                    await self._write(frame)
                self._drained.set()

    async def flush(self) -> None:
        """Until every queued frame went to the transport."""
        while self._out and not self._writer.done():
            await self._drained.wait()

    async def goaway(self) -> None:
        self.send_control(GOAWAY, 0, struct.pack(">II", self._last_stream, 0))
        await self.flush()

    async def close(self, linger: float = CLOSE_LINGER) -> None:
        """GOAWAY sent, then the client's own close awaited (``linger`` seconds at most) before the
        writer stops and the caller drops the connection. As spdystream's shutdown: a socket closed
        while the client still sends (its last frames) is reset, and a reset can take the answer's
        last frames (the output's FIN, the exit status) with it before the client read them."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.goaway(), linger)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.closed.wait(), linger)
        self._writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer
        self.feed_eof()
