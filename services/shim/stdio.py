"""A process's stdio in the shim: pipes or a pty, output to its log and attached clients, stdin.

A terminal's master comes from the runtime over a console socket (SCM_RIGHTS), as runc's
``--console-socket`` sends it; otherwise the shim makes the pipes itself. Output read in the loop
goes to the json-file log and every attached client; input is kept and written as the pipe takes
it, so a slow reader never blocks the loop.
"""

from __future__ import annotations

import _socket as socket
import errno
import os

from services.common.errors import Internal
from services.common.shimproto import FrameKind, ProcStatus, encode
from services.shim.loop import Poller

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from services.shim.locallog import LocalLog
    from services.shim.logfile import JsonFileLog

READ_CHUNK = 65536
# Output of an exec nobody has attached to yet, kept for its first attacher.
MAX_PENDING = 1024 * 1024


class Proc:
    """The container's init (exec_id "") or one exec'd process: its status and its stdio."""

    __slots__ = (
        "exec_id", "pid", "status", "terminal", "stdin_once", "stdin_fd", "stdin_buf", "stdin_closing",
        "outputs", "master", "log", "attachers", "waiters", "pending", "exit", "exited_at_mono",
        "finalized", "process", "started_at",
    )

    def __init__(self, exec_id: str, terminal: bool, stdin_once: bool) -> None:
        self.exec_id = exec_id
        self.pid = 0
        self.status = ProcStatus.CREATED
        self.terminal = terminal
        self.stdin_once = stdin_once
        self.stdin_fd = -1
        self.stdin_buf = bytearray()
        self.stdin_closing = False
        self.outputs: dict[int, str] = {}  # read fd → stream name
        self.master = -1
        self.log: JsonFileLog | LocalLog | None = None
        self.attachers: list[Any] = []  # server.Conn
        self.waiters: list[Any] = []
        self.pending: bytearray | None = None if exec_id == "" else bytearray()
        self.exit: dict[str, Any] | None = None
        self.exited_at_mono = 0.0
        self.finalized = False
        self.process: dict[str, Any] | None = None
        self.started_at = ""

    def describe(self, container_id: str) -> str:
        return f"exec `{self.exec_id}` of container {container_id}" if self.exec_id else f"container {container_id}"


def console_socket(state_dir: str, name: str) -> tuple[socket.socket, str]:
    """A listening socket for the runtime's ``--console-socket``."""
    path = os.path.join(state_dir, name)
    if len(path.encode()) > 100:
        # A deep root prefix (tests) makes the state folder's path too long for AF_UNIX (108 bytes).
        path = f"/tmp/.skiff-console-{os.getpid()}-{name}"
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.bind(path)
    sock.listen(1)
    return sock, path


def receive_master(sock: socket.socket, path: str) -> int:
    """The runtime sent the pty master over the console socket (SCM_RIGHTS) while it ran."""
    sock.settimeout(5)
    try:
        fd, _ = sock._accept()
        conn = socket.socket(fileno=fd)
        try:
            fds = recv_fd(conn)
        finally:
            conn.close()
    except OSError as exc:
        raise Internal(f"receive console from runtime: {exc}") from exc
    finally:
        sock.close()
        os.unlink(path)
    if not fds:
        raise Internal("runtime sent no console file descriptor")
    os.set_inheritable(fds[0], False)
    return fds[0]


def recv_fd(conn: socket.socket) -> list[int]:
    """The file descriptors of one SCM_RIGHTS message (the runtime's console socket)."""
    _msg, ancillary, _flags, _addr = conn.recvmsg(4096, socket.CMSG_SPACE(4))
    fds: list[int] = []
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds += [int.from_bytes(data[i : i + 4], "little") for i in range(0, len(data) - len(data) % 4, 4)]
    return fds


def make_pipes(proc: Proc, want_stdin: bool) -> tuple[int, int, int]:
    """Pipes for a non-terminal process; returns the ends the child gets."""
    if want_stdin:
        child_in, proc.stdin_fd = os.pipe2(os.O_CLOEXEC)
    else:
        child_in = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    proc.outputs = {out_r: "stdout", err_r: "stderr"}
    return child_in, out_w, err_w


class Stdio:
    """The processes' stdio fds in the shim's poller; ``send`` queues a frame to a client."""

    __slots__ = ("sel", "send")

    def __init__(self, sel: Poller, send: Callable[[Any, bytes], None]) -> None:
        self.sel = sel
        self.send = send

    def watch(self, proc: Proc) -> None:
        for fd in proc.outputs:
            os.set_blocking(fd, False)
            self.sel.register(fd, Poller.READ, ("out", proc))
        if proc.stdin_fd >= 0:
            os.set_blocking(proc.stdin_fd, False)

    def close(self, proc: Proc) -> None:
        """Closes every output and stdin at once (unflushed input is dropped)."""
        for fd in list(proc.outputs):
            self.close_output(proc, fd)
        if proc.stdin_fd >= 0:
            if self.sel.events(proc.stdin_fd):
                self.sel.unregister(proc.stdin_fd)
            os.close(proc.stdin_fd)
            proc.stdin_fd = -1

    def close_output(self, proc: Proc, fd: int) -> None:
        stream = proc.outputs.pop(fd, None)
        if stream is None:
            return
        try:
            self.sel.unregister(fd)
        except (KeyError, ValueError):
            pass
        os.close(fd)
        if proc.log:
            proc.log.flush(stream)

    def on_output(self, proc: Proc, fd: int) -> bool:
        """Reads what the process wrote and fans it out; True once that output has ended."""
        try:
            data = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            return False
        except OSError as exc:
            # EIO on a pty master: every slave end is closed.
            if exc.errno != errno.EIO:
                raise
            data = b""
        if not data:
            self.close_output(proc, fd)
            return True
        stream = proc.outputs[fd]
        if proc.log:
            proc.log.write(stream, data)
        frame = encode(FrameKind.STDOUT if stream == "stdout" else FrameKind.STDERR, data)
        # An attacher that only writes stdin does not read: output nobody reads is kept for the first reader.
        readers = [conn for conn in proc.attachers if conn.streams[0 if stream == "stdout" else 1]]
        for conn in readers:
            self.send(conn, frame)
        if not readers and proc.pending is not None and len(proc.pending) < MAX_PENDING:
            proc.pending += frame
        return False

    def write_stdin(self, proc: Proc, data: bytes) -> None:
        if proc.stdin_fd < 0 or proc.stdin_closing:
            return
        proc.stdin_buf += data
        self.flush_stdin(proc)

    def flush_stdin(self, proc: Proc) -> None:
        while proc.stdin_buf and proc.stdin_fd >= 0:
            try:
                n = os.write(proc.stdin_fd, proc.stdin_buf)
            except BlockingIOError:
                break
            except OSError:
                # The reader is gone (EPIPE): nothing more can be delivered.
                proc.stdin_buf.clear()
                break
            del proc.stdin_buf[:n]
        if proc.stdin_fd < 0:
            return
        watched = self.sel.events(proc.stdin_fd)
        if proc.stdin_buf and watched is None:
            self.sel.register(proc.stdin_fd, Poller.WRITE, ("stdin", proc))
        elif not proc.stdin_buf:
            if watched is not None:
                self.sel.unregister(proc.stdin_fd)
            if proc.stdin_closing:
                self._really_close_stdin(proc)

    def close_stdin(self, proc: Proc) -> None:
        """Closes stdin once what was written before has been delivered."""
        if proc.stdin_fd < 0 or proc.stdin_closing:
            return
        proc.stdin_closing = True
        self.flush_stdin(proc)

    @staticmethod
    def _really_close_stdin(proc: Proc) -> None:
        if proc.master >= 0:
            # A terminal has no half-close: end-of-file is the line discipline's ^D.
            try:
                os.write(proc.stdin_fd, b"\x04")
            except OSError:
                pass
        os.close(proc.stdin_fd)
        proc.stdin_fd = -1
