"""The shim's socket and its clients: framed reads, buffered non-blocking writes, drops.

The frames are those of services/common/shimproto.py. What a frame means, and what a dropped
client was attached to, is the Shim's business (server.py): it is told through two callbacks.
"""

from __future__ import annotations

import _socket as socket
import os

from services.common.shimproto import decode_frames, encode_json
from services.shim.loop import Poller

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from services.shim.stdio import Proc

READ_CHUNK = 65536
# An attached client this far behind is dropped rather than let the shim grow without bound.
MAX_CLIENT_BACKLOG = 8 * 1024 * 1024


class Conn:
    """A client connection: its buffers, and what it attached to."""

    __slots__ = ("sock", "rbuf", "wbuf", "attached", "streams", "stdin", "closing")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.rbuf = bytearray()
        self.wbuf = bytearray()
        self.attached: Proc | None = None
        self.streams: tuple[bool, bool] = (True, True)  # stdout, stderr wanted
        self.stdin = False
        self.closing = False  # dropped once its buffer is sent


class Clients:
    __slots__ = ("sel", "path", "listener", "on_frame", "on_drop")

    def __init__(self, sel: Poller, path: str, on_frame: Callable[[Conn, int, bytes], None],
                 on_drop: Callable[[Conn], None]) -> None:
        self.sel = sel
        self.path = path
        self.on_frame = on_frame
        self.on_drop = on_drop
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        self.listener.bind(path)
        self.listener.listen(64)
        self.listener.setblocking(False)
        sel.register(self.listener.fileno(), Poller.READ, ("listen", None))

    def accept(self) -> None:
        try:
            fd, _ = self.listener._accept()  # accept4 with SOCK_CLOEXEC
        except BlockingIOError:
            return
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        conn = Conn(sock)
        self.sel.register(sock.fileno(), Poller.READ, ("conn", conn))

    def on_events(self, conn: Conn, events: int) -> None:
        if events & Poller.WRITE:
            self.flush(conn)
        if not events & Poller.READ:
            return
        try:
            data = conn.sock.recv(READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.drop(conn)
            return
        conn.rbuf += data
        try:
            frames = decode_frames(conn.rbuf)
        except ValueError:
            self.drop(conn)
            return
        for kind, payload in frames:
            self.on_frame(conn, kind, payload)

    def reply(self, conn: Conn, message: dict[str, Any]) -> None:
        self.send(conn, encode_json(message))

    def send(self, conn: Conn, frame: bytes) -> None:
        if len(conn.wbuf) > MAX_CLIENT_BACKLOG:
            self.drop(conn)
            return
        conn.wbuf += frame
        self.flush(conn)

    def flush(self, conn: Conn) -> None:
        fd = conn.sock.fileno()
        if fd < 0:
            return
        try:
            while conn.wbuf:
                n = conn.sock.send(conn.wbuf)
                del conn.wbuf[:n]
        except BlockingIOError:
            pass
        except OSError:
            self.drop(conn)
            return
        want = Poller.READ | (Poller.WRITE if conn.wbuf else 0)
        if not conn.wbuf and conn.closing:
            self.drop(conn)
            return
        if self.sel.events(fd) != want:
            self.sel.modify(fd, want, ("conn", conn))

    def drop(self, conn: Conn) -> None:
        fd = conn.sock.fileno()
        if fd < 0:
            return
        self.sel.unregister(fd)
        conn.sock.close()
        self.on_drop(conn)

    @staticmethod
    def send_now(conn: Conn) -> None:
        """The last answer, sent whole before the shim exits (blocking: the loop is over)."""
        conn.sock.setblocking(True)
        try:
            conn.sock.sendall(conn.wbuf)
        except OSError:
            pass
