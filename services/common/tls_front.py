"""TLS ended in front of an HTTP server: each TCP connection's plaintext reaches the server over a UNIX
socket pair, as if the client had connected to its UNIX socket.

Why not the event loop's own TLS transport: a Docker client half-closes a hijacked connection (attach,
exec, ``run``) when it has no more input, and over TLS that half-close is a ``close_notify`` alert.
asyncio's TLS transport then closes the whole connection (``eof_received`` returning True "has no
effect when using ssl"), so the container's output never reaches the client. Here a ``close_notify``
(or a bare FIN) becomes a half-close of the pair (``write_eof``), which the server's hijacked stream
reads as the end of the client's input while its output still flows back, as dockerd's Go TLS does.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable
from typing import cast

import structlog

log = structlog.get_logger()

READ_SIZE = 65536


class _ToServer(asyncio.Protocol):
    """Our end of the pair: what the server answers goes out encrypted."""

    def __init__(self, front: _TLSConnection) -> None:
        self.front = front

    def data_received(self, data: bytes) -> None:
        self.front.send_plain(data)

    def eof_received(self) -> bool:
        self.front.server_done()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.front.server_done()

    def pause_writing(self) -> None:  # the server reads slower than the client sends
        self.front.tcp_pause()

    def resume_writing(self) -> None:
        self.front.tcp_resume()


class _TLSConnection(asyncio.Protocol):
    """One client: the handshake, then plaintext both ways between the TCP connection and the pair."""

    def __init__(self, context: ssl.SSLContext, server_factory: Callable[[], asyncio.BaseProtocol]) -> None:
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.server_factory = server_factory
        self.tcp: asyncio.Transport | None = None
        self.pair: asyncio.Transport | None = None  # our end, once connected
        self.pending: list[bytes] = []  # plaintext read before the pair was ready
        self.pending_eof = False
        self.handshaken = False
        self.closed = False

    # ---- the client's side ----

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.tcp = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio.Transport's subclasses

    def data_received(self, data: bytes) -> None:
        self.incoming.write(data)
        self._pump()

    def eof_received(self) -> bool:
        # A FIN without close_notify: the client sends no more; its answer may still go back.
        self.incoming.write_eof()
        self._pump()
        self._client_ended()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.pair is not None:
            self.pair.close()

    def pause_writing(self) -> None:  # the client reads slower than the server answers
        if self.pair is not None:
            self.pair.pause_reading()

    def resume_writing(self) -> None:
        if self.pair is not None:
            self.pair.resume_reading()

    def tcp_pause(self) -> None:
        if self.tcp is not None and not self.closed:
            self.tcp.pause_reading()

    def tcp_resume(self) -> None:
        if self.tcp is not None and not self.closed:
            self.tcp.resume_reading()

    def _pump(self) -> None:
        if not self.handshaken:
            try:
                self.tls.do_handshake()
            except ssl.SSLWantReadError:
                self._flush()
                return
            except (ssl.SSLError, OSError) as exc:
                # A client the CA did not sign, no certificate, plain HTTP; an EOF: a probe's bare connect.
                (log.debug if isinstance(exc, ssl.SSLEOFError) else log.info)("TLS handshake refused", error=str(exc))
                self._flush()
                self._abort()
                return
            self.handshaken = True
            self._flush()
            asyncio.ensure_future(self._connect_server())
        while True:
            try:
                chunk = self.tls.read(READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:  # close_notify: the client's half-close
                self._client_ended()
                break
            except (ssl.SSLError, OSError) as exc:
                log.info("TLS read failed", error=str(exc))
                self._abort()
                return
            if not chunk:
                self._client_ended()
                break
            self._to_server(chunk)
        self._flush()

    def _to_server(self, chunk: bytes) -> None:
        if self.pair is None:
            self.pending.append(chunk)
        else:
            self.pair.write(chunk)

    def _client_ended(self) -> None:
        if self.pair is None:
            self.pending_eof = True
        elif self.pair.can_write_eof() and not self.pair.is_closing():
            self.pair.write_eof()

    async def _connect_server(self) -> None:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            await loop.connect_accepted_socket(self.server_factory, theirs)
            transport, _ = await loop.create_connection(lambda: _ToServer(self), sock=ours)
        except OSError as exc:
            log.warning("TLS front: no connection to the server", error=str(exc))
            ours.close()
            theirs.close()
            self._abort()
            return
        if self.closed:
            transport.close()
            return
        self.pair = cast(asyncio.Transport, transport)
        for chunk in self.pending:
            self.pair.write(chunk)
        self.pending.clear()
        if self.pending_eof:
            self._client_ended()

    # ---- the server's side ----

    def send_plain(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            self.tls.write(data)
        except (ssl.SSLError, OSError) as exc:
            log.info("TLS write failed", error=str(exc))
            self._abort()
            return
        self._flush()

    def server_done(self) -> None:
        """The server closed its side: close_notify, then the connection."""
        if self.closed or self.tcp is None:
            return
        try:
            self.tls.unwrap()
        except (ssl.SSLError, OSError):
            pass  # SSLWantReadError too: our close_notify is out, the client's is not awaited
        self._flush()
        self.closed = True
        self.tcp.close()  # after what is buffered is written

    def _flush(self) -> None:
        data = self.outgoing.read()
        if data and self.tcp is not None and not self.tcp.is_closing():
            self.tcp.write(data)

    def _abort(self) -> None:
        self.closed = True
        if self.tcp is not None:
            self.tcp.close()
        if self.pair is not None:
            self.pair.close()


async def serve(sock: socket.socket, context: ssl.SSLContext,
                server_factory: Callable[[], asyncio.BaseProtocol]) -> asyncio.Server:
    """Serves TLS on the listening ``sock``; ``server_factory`` makes the HTTP server's protocol for each
    connection (aiohttp's ``runner.server``). Close the returned server to stop accepting."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: _TLSConnection(context, server_factory), sock=sock)
