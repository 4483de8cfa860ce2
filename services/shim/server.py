"""The shim's single-threaded loop: stdio, reaping, exit records and the socket protocol.

One ``selectors`` loop owns every file descriptor. SIGCHLD arrives through the signal wakeup fd, so
reaping, output and requests never race. Runtime commands run to completion inside the loop (they
take tens of milliseconds; the pipes buffer the container's output meanwhile).
"""

from __future__ import annotations

import _signal as signal
import _socket as socket
import contextlib
import errno
import os
import select
import sys
import time

from services.common import cgroupfs
from services.common import jsonio as json
from services.common.atomic import atomic_write
from services.common.shimproto import (
    FrameKind,
    Op,
    ProcStatus,
    decode_frames,
    encode,
    encode_json,
    rfc3339_nano,
)
from services.shim.logfile import JsonFileLog

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

READ_CHUNK = 65536
# Output still flowing this long after the process ended (a daemonised grandchild holding the
# pipe) no longer delays the exit report.
OUTPUT_GRACE = 2.0
RUNTIME_TIMEOUT = 60.0
MAX_FD = 1 << 20
# An attached client this far behind is dropped rather than let the shim grow without bound.
MAX_CLIENT_BACKLOG = 8 * 1024 * 1024
# Output of an exec nobody has attached to yet, kept for its first attacher.
MAX_PENDING = 1024 * 1024
# cgroup v1 signals the OOM eventfd before the OOM killer picks its victim (and bumps oom_kill):
# after a wake-up without a new kill, the counter is read again this often, for this long.
OOM_RECHECK = 0.02
OOM_RECHECK_FOR = 2.0


class Poller:
    """epoll with a payload per fd: ``selectors`` pulls in ``collections`` and costs ~5 ms per launch."""

    READ = select.EPOLLIN
    WRITE = select.EPOLLOUT

    def __init__(self) -> None:
        self.epoll = select.epoll()
        self.keys: dict[int, tuple[int, Any]] = {}

    def register(self, fd: int, events: int, data: Any) -> None:
        self.epoll.register(fd, events)
        self.keys[fd] = (events, data)

    def modify(self, fd: int, events: int, data: Any) -> None:
        self.epoll.modify(fd, events)
        self.keys[fd] = (events, data)

    def unregister(self, fd: int) -> None:
        del self.keys[fd]
        self.epoll.unregister(fd)

    def events(self, fd: int) -> int | None:
        key = self.keys.get(fd)
        return key[0] if key else None

    def select(self, timeout: float | None) -> list[tuple[int, Any, int]]:
        ready = []
        for fd, happened in self.epoll.poll(-1 if timeout is None else timeout):
            key = self.keys.get(fd)
            if key is None:
                continue
            if happened & (select.EPOLLHUP | select.EPOLLERR):
                # A hang-up is seen as readiness for whatever was asked: the read or write says why.
                happened |= key[0]
            ready.append((fd, key[1], happened & key[0]))
        return ready


class ShimError(Exception):
    """Carries an error kind of services.common.errors (by value) across the socket."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message




class Proc:
    """The container's init (exec_id "") or one exec'd process."""

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
        self.log: JsonFileLog | None = None
        self.attachers: list[Conn] = []
        self.waiters: list[Conn] = []
        self.pending: bytearray | None = None if exec_id == "" else bytearray()
        self.exit: dict[str, Any] | None = None
        self.exited_at_mono = 0.0
        self.finalized = False
        self.process: dict[str, Any] | None = None
        self.started_at = ""


class Conn:
    __slots__ = ("sock", "rbuf", "wbuf", "attached", "streams", "stdin", "closing")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.rbuf = bytearray()
        self.wbuf = bytearray()
        self.attached: Proc | None = None
        self.streams: tuple[bool, bool] = (True, True)
        self.stdin = False
        self.closing = False


class Shim:
    def __init__(self, state_dir: str, boot: dict[str, Any]) -> None:
        self.dir = state_dir
        self.boot = boot
        self.id: str = boot["id"]
        self.runtime: list[str] = list(boot["runtime"]) + ["--root", boot["runtime_root"]]
        self.runtime_in_process = boot.get("runtime_name") == "skiff-lowlevel" and os.environ.get(
            "SKIFF_SHIM_FORK_RUNTIME", "1") != "0"
        self.sel = Poller()
        self.procs: dict[str, Proc] = {}
        self.reaped: dict[int, int] = {}
        self.conns: dict[int, Conn] = {}
        self.memory_cgroup = ""
        # OOM watch: an eventfd (v1) or memory.events itself (v2, EPOLLPRI) in the loop.
        self.oom_fd = -1
        self.oom_v2 = False
        self.oom_count = 0
        self.oom_recheck_until = 0.0
        self.subscribers: list[Conn] = []
        self.deleted = False
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self.wake_w)
        # A Python handler is needed for the wakeup fd to fire; reaping happens in the loop.
        signal.signal(signal.SIGCHLD, lambda _s, _f: None)
        signal.signal(signal.SIGTERM, lambda _s, _f: None)
        self.sel.register(self.wake_r, Poller.READ, ("wake", None))
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            os.unlink(boot["socket"])
        except FileNotFoundError:
            pass
        self.listener.bind(boot["socket"])
        self.listener.listen(64)
        self.listener.setblocking(False)
        self.sel.register(self.listener.fileno(), Poller.READ, ("listen", None))

    # ---- runtime commands -------------------------------------------------------------------

    def run_runtime(self, args: list[str], stdio: tuple[int, int, int] | None = None,
                    timeout: float = RUNTIME_TIMEOUT) -> tuple[int, str]:
        """Runs ``<runtime> --root R args...``; returns (exit code, stderr). Reaps while waiting."""
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        fds = stdio or (null, null, err_w)
        actions = [(os.POSIX_SPAWN_DUP2, fds[0], 0), (os.POSIX_SPAWN_DUP2, fds[1], 1),
                   (os.POSIX_SPAWN_DUP2, err_w if stdio is None else fds[2], 2)]
        # The runtime's own errors go to its log: its stderr may be the container's stderr pipe.
        log_path = os.path.join(self.dir, "runtime.log")
        try:
            offset = os.path.getsize(log_path)
        except OSError:
            offset = 0
        argv = self.runtime + ["--log", log_path, "--log-format", "json"] + args
        try:
            if self.runtime_in_process:
                pid = self._fork_runtime(argv[len(self.boot["runtime"]):], (fds[0], fds[1], actions[2][1]))
            else:
                pid = os.posix_spawn(argv[0], argv, os.environ, file_actions=actions,
                                     setsigdef=(signal.SIGPIPE, signal.SIGXFSZ, signal.SIGCHLD, signal.SIGTERM))
        except OSError as exc:
            os.close(err_r)
            os.close(err_w)
            os.close(null)
            raise ShimError("failed_precondition", f"run runtime `{argv[0]}`: {exc.strerror}") from exc
        os.close(err_w)
        os.close(null)
        deadline = time.monotonic() + timeout
        chunks: list[bytes] = []
        err_open = True
        while True:
            self.reap()
            if pid in self.reaped:
                status = self.reaped.pop(pid)
                break
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + 5
                continue
            watch = [self.wake_r] + ([err_r] if err_open else [])
            ready = select.select(watch, [], [], min(left, 1.0))[0]
            if self.wake_r in ready:
                self._drain_wakeup()
            if err_open and err_r in ready:
                data = os.read(err_r, READ_CHUNK)
                if data:
                    chunks.append(data)
                else:
                    err_open = False
        if err_open:
            os.set_blocking(err_r, False)
            try:
                while data := os.read(err_r, READ_CHUNK):
                    chunks.append(data)
            except BlockingIOError:
                pass
        os.close(err_r)
        code = os.waitstatus_to_exitcode(status)
        if code == 0:
            return 0, ""
        logged = b""
        try:
            with open(log_path, "rb") as f:
                f.seek(offset)
                logged = f.read(65536)
        except OSError:
            pass
        return code, runtime_message(logged, errors_only=True) or runtime_message(b"".join(chunks))

    def _fork_runtime(self, args: list[str], stdio: tuple[int, int, int]) -> int:
        """Runs skiff-lowlevel's command line in a forked child instead of a new interpreter.

        Same argv, same stdio, same exit code as exec'ing it: only the interpreter start and the
        imports (about 15 ms a call, three calls a container) are saved. Other runtimes are exec'd.
        """
        pid = os.fork()
        if pid:
            return pid
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            # As a fresh interpreter has them: SIGPIPE and SIGXFSZ ignored (Python's own), the rest default.
            for sig in (signal.SIGCHLD, signal.SIGTERM):
                signal.signal(sig, signal.SIG_DFL)
            for target, fd in enumerate(stdio):
                os.dup2(fd, target)
            # An exec would drop the shim's descriptors (all close-on-exec); the container's init,
            # forked from here, must not hold them either (the launcher's ready pipe among them).
            os.closerange(3, MAX_FD)
            from services.lowlevel.cli import main as lowlevel_main

            code = lowlevel_main(args)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException as exc:  # noqa: BLE001 - the runtime's own crash, as its stderr would show it
            with contextlib.suppress(OSError):
                os.write(2, f"skiff-lowlevel: {exc!r}\n".encode())
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.reaped[pid] = status

    def _drain_wakeup(self) -> None:
        try:
            while os.read(self.wake_r, 512):
                pass
        except BlockingIOError:
            pass

    # ---- stdio ------------------------------------------------------------------------------

    def _console_socket(self, name: str) -> tuple[socket.socket, str]:
        path = os.path.join(self.dir, name)
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

    def _receive_master(self, sock: socket.socket, path: str) -> int:
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
            raise ShimError("internal", f"receive console from runtime: {exc}") from exc
        finally:
            sock.close()
            os.unlink(path)
        if not fds:
            raise ShimError("internal", "runtime sent no console file descriptor")
        os.set_inheritable(fds[0], False)
        return fds[0]

    def _make_pipes(self, proc: Proc, want_stdin: bool) -> tuple[int, int, int]:
        """Pipes for a non-terminal process; returns the ends the child gets."""
        if want_stdin:
            child_in, proc.stdin_fd = os.pipe2(os.O_CLOEXEC)
        else:
            child_in = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        proc.outputs = {out_r: "stdout", err_r: "stderr"}
        return child_in, out_w, err_w

    def _watch_outputs(self, proc: Proc) -> None:
        for fd in proc.outputs:
            os.set_blocking(fd, False)
            self.sel.register(fd, Poller.READ, ("out", proc))
        if proc.stdin_fd >= 0:
            os.set_blocking(proc.stdin_fd, False)

    def _launch(self, proc: Proc, args: list[str], want_stdin: bool) -> None:
        """Runs a runtime ``create`` or ``exec`` with the process's stdio wired up."""
        pid_file = os.path.join(self.dir, f"{proc.exec_id or 'init'}.pid")
        extra = ["--pid-file", pid_file]
        console: tuple[socket.socket, str] | None = None
        child: tuple[int, int, int]
        if proc.terminal:
            console = self._console_socket("c.sock")
            extra += ["--console-socket", console[1]]
            null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
            child = (null, null, null)
        else:
            child = self._make_pipes(proc, want_stdin)
        argv = args[:1] + extra + args[1:]
        try:
            code, message = self.run_runtime(argv, stdio=child)
        finally:
            for fd in set(child):
                os.close(fd)
        if code != 0:
            if console:
                console[0].close()
                os.unlink(console[1])
            self._close_stdio(proc)
            raise ShimError(classify(message), message or f"runtime {args[0]} exited with {code}")
        if console:
            proc.master = self._receive_master(*console)
            proc.outputs = {proc.master: "stdout"}
            if want_stdin:
                proc.stdin_fd = os.dup(proc.master)
                os.set_inheritable(proc.stdin_fd, False)
        with open(pid_file) as f:
            proc.pid = int(f.read().strip())
        self._watch_outputs(proc)

    def _close_stdio(self, proc: Proc) -> None:
        for fd in list(proc.outputs):
            self._close_output(proc, fd)
        if proc.stdin_fd >= 0:
            os.close(proc.stdin_fd)
            proc.stdin_fd = -1

    def _close_output(self, proc: Proc, fd: int) -> None:
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

    def _on_output(self, proc: Proc, fd: int) -> None:
        try:
            data = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError as exc:
            # EIO on a pty master: every slave end is closed.
            if exc.errno != errno.EIO:
                raise
            data = b""
        if not data:
            self._close_output(proc, fd)
            self._maybe_finalize(proc)
            return
        stream = proc.outputs[fd]
        if proc.log:
            proc.log.write(stream, data)
        if proc.attachers:
            frame = encode(FrameKind.STDOUT if stream == "stdout" else FrameKind.STDERR, data)
            for conn in list(proc.attachers):
                if conn.streams[0 if stream == "stdout" else 1]:
                    self._send(conn, frame)
        elif proc.pending is not None and len(proc.pending) < MAX_PENDING:
            proc.pending += encode(FrameKind.STDOUT if stream == "stdout" else FrameKind.STDERR, data)

    def _write_stdin(self, proc: Proc, data: bytes) -> None:
        if proc.stdin_fd < 0 or proc.stdin_closing:
            return
        proc.stdin_buf += data
        self._flush_stdin(proc)

    def _flush_stdin(self, proc: Proc) -> None:
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
        key = self._key(proc.stdin_fd)
        if proc.stdin_buf and key is None:
            self.sel.register(proc.stdin_fd, Poller.WRITE, ("stdin", proc))
        elif not proc.stdin_buf:
            if key is not None:
                self.sel.unregister(proc.stdin_fd)
            if proc.stdin_closing:
                self._really_close_stdin(proc)

    def _close_stdin(self, proc: Proc) -> None:
        if proc.stdin_fd < 0 or proc.stdin_closing:
            return
        proc.stdin_closing = True
        self._flush_stdin(proc)

    def _really_close_stdin(self, proc: Proc) -> None:
        if proc.master >= 0:
            # A terminal has no half-close: end-of-file is the line discipline's ^D.
            try:
                os.write(proc.stdin_fd, b"\x04")
            except OSError:
                pass
        os.close(proc.stdin_fd)
        proc.stdin_fd = -1

    def _key(self, fd: int) -> int | None:
        return self.sel.events(fd)

    # ---- exits ------------------------------------------------------------------------------

    def process_exits(self) -> None:
        if not self.reaped:
            return
        by_pid = {p.pid: p for p in self.procs.values() if p.pid and p.exit is None}
        for pid, status in list(self.reaped.items()):
            del self.reaped[pid]
            proc = by_pid.get(pid)
            if proc is not None:
                self._on_exit(proc, status)

    def _on_exit(self, proc: Proc, status: int) -> None:
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0
        code = 128 + sig if sig else os.WEXITSTATUS(status)
        # Subscribers hear of an OOM kill before the exit it caused.
        self._check_oom()
        oom = proc.exec_id == "" and sig == signal.SIGKILL and self._oom_killed()
        proc.exit = {"exit_code": code, "signal": sig, "oom_killed": oom, "exited_at": rfc3339_nano()}
        if oom:
            # The counter lets highlevel tell whether it already announced this OOM live.
            proc.exit["oom_kill"] = self._read_oom_kills()
        proc.status = ProcStatus.STOPPED
        proc.exited_at_mono = time.monotonic()
        if proc.exec_id == "":
            # Recorded before anyone is told: a highlevel runtime that comes back reads it here.
            self.save_state()
        self._maybe_finalize(proc)

    def _oom_killed(self) -> bool:
        # Docker's reading: an init killed by SIGKILL in a cgroup where the OOM killer struck.
        return self._read_oom_kills() > 0

    def _read_oom_kills(self) -> int:
        """The cgroup's ``oom_kill`` counter (v1 memory.oom_control, v2 memory.events); -1 if gone."""
        if not self.memory_cgroup:
            return -1
        for name in ("memory.oom_control", "memory.events"):
            try:
                with open(os.path.join(self.memory_cgroup, name), "rb") as f:
                    for line in f.read().splitlines():
                        key, _, value = line.partition(b" ")
                        if key == b"oom_kill":
                            return int(value)
            except OSError:
                continue
        return -1

    def _watch_oom(self) -> None:
        """Arms the OOM notification of the container's memory cgroup; a failure only costs the live event."""
        cg = self.memory_cgroup
        if not cg:
            return
        self.oom_count = max(self._read_oom_kills(), 0)
        events_file = os.path.join(cg, "memory.events")
        if os.path.exists(events_file):
            # v2: kernfs wakes pollers of memory.events with EPOLLPRI whenever a counter moves.
            try:
                self.oom_fd = os.open(events_file, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return
            self.oom_v2 = True
            self.sel.register(self.oom_fd, select.EPOLLPRI | select.EPOLLERR, ("oom", None))
            return
        try:
            efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        except OSError:
            return
        try:
            control = os.open(os.path.join(cg, "memory.oom_control"), os.O_RDONLY | os.O_CLOEXEC)
            try:
                ctl = os.open(os.path.join(cg, "cgroup.event_control"), os.O_WRONLY | os.O_CLOEXEC)
                try:
                    os.write(ctl, f"{efd} {control}".encode())
                finally:
                    os.close(ctl)
            finally:
                # The kernel holds its own reference to the eventfd; the control file is not needed.
                os.close(control)
        except OSError:
            os.close(efd)
            return
        self.oom_fd = efd
        self.sel.register(efd, Poller.READ, ("oom", None))

    def _on_oom_wake(self) -> None:
        if self.oom_v2:
            # Re-arms the notification: kernfs wakes again only after the file was read.
            try:
                os.pread(self.oom_fd, 4096, 0)
            except OSError:
                pass
        else:
            try:
                os.eventfd_read(self.oom_fd)
            except OSError:
                pass
        if not self._check_oom():
            if self._read_oom_kills() < 0:
                self._stop_oom_watch()  # the cgroup was removed (v1 signals that too)
            else:
                self.oom_recheck_until = time.monotonic() + OOM_RECHECK_FOR

    def _stop_oom_watch(self) -> None:
        if self.oom_fd >= 0:
            self.sel.unregister(self.oom_fd)
            os.close(self.oom_fd)
            self.oom_fd = -1
        self.oom_recheck_until = 0.0

    def _check_oom(self) -> bool:
        """Tells subscribers of every OOM kill since the last look; True if there was one."""
        if self.oom_fd < 0:
            return False
        count = self._read_oom_kills()
        if count <= self.oom_count:
            return False
        self.oom_count = count
        self.oom_recheck_until = 0.0
        notice = encode_json({"event": "oom", "oom_kill": count, "time": rfc3339_nano()})
        for conn in list(self.subscribers):
            self._send(conn, notice)
        return True

    def _maybe_finalize(self, proc: Proc, force: bool = False) -> None:
        if proc.finalized or proc.exit is None:
            return
        if proc.outputs and not force:
            return
        proc.finalized = True
        for fd in list(proc.outputs):
            self._close_output(proc, fd)
        if proc.stdin_fd >= 0:
            if self._key(proc.stdin_fd):
                self.sel.unregister(proc.stdin_fd)
            os.close(proc.stdin_fd)
            proc.stdin_fd = -1
        for conn in proc.attachers:
            conn.closing = True  # before the send: the flush that empties the buffer closes it
            self._send(conn, encode(FrameKind.EOF, json.dumps(proc.exit).encode()))
        proc.attachers.clear()
        for conn in proc.waiters:
            self._reply(conn, self._proc_state(proc))
        proc.waiters.clear()

    def _check_grace(self) -> float | None:
        """Finalizes processes whose output outlived them too long; returns the next timeout."""
        now = time.monotonic()
        soonest: float | None = None
        for proc in self.procs.values():
            if proc.exit is not None and not proc.finalized:
                left = proc.exited_at_mono + OUTPUT_GRACE - now
                if left <= 0:
                    self._maybe_finalize(proc, force=True)
                else:
                    soonest = left if soonest is None else min(soonest, left)
        return soonest

    # ---- state ------------------------------------------------------------------------------

    def _proc_state(self, proc: Proc) -> dict[str, Any]:
        return {
            "id": self.id, "exec_id": proc.exec_id, "pid": proc.pid, "status": proc.status,
            "terminal": proc.terminal, "exit": proc.exit if proc.finalized else None,
            "started_at": proc.started_at, "shim_pid": os.getpid(),
        }

    def save_state(self) -> None:
        init = self.procs[""]
        record = {"id": self.id, "pid": init.pid, "status": init.status, "exit": init.exit,
                  "started_at": init.started_at}
        atomic_write(os.path.join(self.dir, "status.json"), json.dumps(record).encode())

    # ---- lifecycle --------------------------------------------------------------------------

    def create(self) -> int:
        boot = self.boot
        init = Proc("", bool(boot.get("terminal")), bool(boot.get("stdin_once")))
        if boot.get("log_path"):
            init.log = JsonFileLog(boot["log_path"], int(boot.get("log_max_size") or 0),
                                   int(boot.get("log_max_file") or 1))
        self.procs[""] = init
        self._launch(init, ["create", "--bundle", boot["bundle"], self.id], bool(boot.get("stdin")))
        self.memory_cgroup = cgroupfs.memory_cgroup(init.pid)
        self._watch_oom()
        self.save_state()
        return init.pid

    def _get(self, exec_id: str) -> Proc:
        proc = self.procs.get(exec_id)
        if proc is None:
            raise ShimError("not_found", f"process `{exec_id}` of container {self.id}: not found")
        return proc

    def op_start(self, req: dict[str, Any]) -> dict[str, Any]:
        proc = self._get(req.get("exec_id", ""))
        if proc.status != ProcStatus.CREATED:
            raise ShimError("failed_precondition", f"{describe(proc, self.id)} is {proc.status}, not created")
        if proc.exec_id == "":
            code, message = self.run_runtime(["start", self.id])
            if code != 0:
                raise ShimError(classify(message), message or f"runtime start exited with {code}")
        else:
            init = self.procs[""]
            if init.status not in (ProcStatus.RUNNING, ProcStatus.PAUSED):
                raise ShimError("failed_precondition", f"container {self.id} is not running")
            process_file = os.path.join(self.dir, f"{proc.exec_id}.json")
            atomic_write(process_file, json.dumps(proc.process).encode())
            want_stdin = proc.stdin_fd == -2
            proc.stdin_fd = -1
            self._launch(proc, ["exec", "--process", process_file, "--detach", self.id], want_stdin)
        proc.started_at = rfc3339_nano()
        if proc.exit is None:
            proc.status = ProcStatus.RUNNING
        if proc.exec_id == "":
            self.save_state()
        return self._proc_state(proc)

    def op_exec(self, req: dict[str, Any]) -> dict[str, Any]:
        exec_id = req.get("exec_id") or ""
        if not exec_id:
            raise ShimError("invalid_argument", "exec needs an exec id")
        if exec_id in self.procs:
            raise ShimError("already_exists", f"exec `{exec_id}` of container {self.id} already exists")
        init = self.procs[""]
        if init.status not in (ProcStatus.RUNNING, ProcStatus.PAUSED):
            raise ShimError("failed_precondition", f"container {self.id} is not running")
        process = req.get("process")
        if not isinstance(process, dict) or not process.get("args"):
            raise ShimError("invalid_argument", "exec needs a process spec with args")
        proc = Proc(exec_id, bool(req.get("terminal")), bool(req.get("stdin_once")))
        process["terminal"] = proc.terminal
        proc.process = process
        # -2 marks "stdin wanted" until start creates the real pipe.
        proc.stdin_fd = -2 if req.get("stdin") else -1
        self.procs[exec_id] = proc
        return self._proc_state(proc)

    def op_kill(self, req: dict[str, Any]) -> dict[str, Any]:
        proc = self._get(req.get("exec_id", ""))
        sig = int(req.get("signal") or signal.SIGTERM)
        if proc.exit is not None or proc.pid == 0:
            raise ShimError("failed_precondition", f"{describe(proc, self.id)} is not running")
        if proc.exec_id == "":
            args = ["kill"] + (["--all"] if req.get("all") else []) + [self.id, str(sig)]
            code, message = self.run_runtime(args)
            if code != 0:
                self.reap()
                self.process_exits()
                if proc.exit is not None:
                    raise ShimError("failed_precondition", f"{describe(proc, self.id)} is not running")
                raise ShimError(classify(message), message or f"runtime kill exited with {code}")
        else:
            try:
                os.kill(proc.pid, sig)
            except ProcessLookupError as exc:
                raise ShimError("failed_precondition", f"{describe(proc, self.id)} is not running") from exc
        return {}

    def op_pause(self, pause: bool) -> dict[str, Any]:
        init = self.procs[""]
        want, new = (ProcStatus.RUNNING, ProcStatus.PAUSED) if pause else (ProcStatus.PAUSED, ProcStatus.RUNNING)
        if init.status != want:
            raise ShimError("failed_precondition", f"container {self.id} is {init.status}, not {want}")
        code, message = self.run_runtime(["pause" if pause else "resume", self.id])
        if code != 0:
            raise ShimError(classify(message), message or f"runtime pause exited with {code}")
        init.status = new
        self.save_state()
        return self._proc_state(init)

    def op_resize(self, req: dict[str, Any]) -> dict[str, Any]:
        import fcntl
        import struct
        import termios

        proc = self._get(req.get("exec_id", ""))
        if proc.master < 0:
            raise ShimError("failed_precondition", f"{describe(proc, self.id)} has no terminal")
        size = struct.pack("HHHH", int(req.get("height", 0)), int(req.get("width", 0)), 0, 0)
        fcntl.ioctl(proc.master, termios.TIOCSWINSZ, size)
        return {}

    def op_delete(self, req: dict[str, Any]) -> dict[str, Any]:
        exec_id = req.get("exec_id", "")
        proc = self._get(exec_id)
        if exec_id:
            if proc.status in (ProcStatus.RUNNING, ProcStatus.PAUSED) and proc.exit is None:
                raise ShimError("failed_precondition", f"{describe(proc, self.id)} is running")
            self._close_stdio(proc)
            del self.procs[exec_id]
            return self._proc_state(proc)
        if proc.exit is None and proc.status != ProcStatus.CREATED and not req.get("force"):
            raise ShimError("failed_precondition", f"container {self.id} is {proc.status}: stop it first")
        force = proc.exit is None
        code, message = self.run_runtime(["delete"] + (["--force"] if force else []) + [self.id])
        if code != 0 and "does not exist" not in message and "not exist" not in message:
            raise ShimError(classify(message), message or f"runtime delete exited with {code}")
        if proc.exit is None and proc.pid:
            self._wait_exit(proc)
        self.deleted = True
        return self._proc_state(proc)

    def _wait_exit(self, proc: Proc) -> None:
        """After a forced delete: collect the killed init so its status is recorded."""
        deadline = time.monotonic() + 5
        while proc.exit is None and time.monotonic() < deadline:
            self.reap()
            self.process_exits()
            if proc.exit is None:
                select.select([self.wake_r], [], [], 0.05)
                self._drain_wakeup()
        self._maybe_finalize(proc, force=True)

    # ---- connections ------------------------------------------------------------------------

    def _accept(self) -> None:
        try:
            fd, _ = self.listener._accept()  # accept4 with SOCK_CLOEXEC
        except BlockingIOError:
            return
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        conn = Conn(sock)
        self.conns[sock.fileno()] = conn
        self.sel.register(sock.fileno(), Poller.READ, ("conn", conn))

    def _on_conn(self, conn: Conn, events: int) -> None:
        if events & Poller.WRITE:
            self._flush_conn(conn)
        if not events & Poller.READ:
            return
        try:
            data = conn.sock.recv(READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return
        conn.rbuf += data
        try:
            frames = decode_frames(conn.rbuf)
        except ValueError:
            self._drop(conn)
            return
        for kind, payload in frames:
            self._on_frame(conn, kind, payload)
            if self.deleted:
                return

    def _on_frame(self, conn: Conn, kind: int, payload: bytes) -> None:
        if kind == FrameKind.STDIN and conn.attached is not None:
            self._write_stdin(conn.attached, payload)
            return
        if kind == FrameKind.STDIN_CLOSE and conn.attached is not None:
            self._close_stdin(conn.attached)
            return
        if kind != FrameKind.JSON:
            return
        try:
            req = json.loads(payload)
            op = req.get("op")
            if op not in Op.ALL:
                raise ValueError(op)
        except (ValueError, AttributeError):
            self._reply(conn, {"error": {"kind": "invalid_argument", "message": "bad shim request"}})
            return
        try:
            reply = self._dispatch(conn, op, req)
        except ShimError as exc:
            reply = {"error": {"kind": exc.kind, "message": exc.message}}
        except OSError as exc:
            reply = {"error": {"kind": "internal", "message": f"{op}: {exc}"}}
        if reply is not None:
            self._reply(conn, reply)
        if self.deleted:
            self._finish(conn)

    def _dispatch(self, conn: Conn, op: str, req: dict[str, Any]) -> dict[str, Any] | None:
        exec_id = req.get("exec_id", "")
        if op == Op.STATE:
            state = self._proc_state(self._get(exec_id))
            if not exec_id and req.get("execs"):
                # A restarted highlevel learns the execs it had started (and their exits) here.
                state["execs"] = [self._proc_state(proc) for key, proc in self.procs.items() if key]
            return state
        if op == Op.START:
            return self.op_start(req)
        if op == Op.WAIT:
            proc = self._get(exec_id)
            if proc.finalized:
                return self._proc_state(proc)
            proc.waiters.append(conn)
            return None
        if op == Op.KILL:
            return self.op_kill(req)
        if op == Op.RESIZE:
            return self.op_resize(req)
        if op == Op.ATTACH:
            return self._attach(conn, self._get(exec_id), req)
        if op == Op.EXEC:
            return self.op_exec(req)
        if op == Op.CLOSE_STDIN:
            self._close_stdin(self._get(exec_id))
            return {}
        if op == Op.PAUSE or op == Op.RESUME:
            return self.op_pause(op == Op.PAUSE)
        if op == Op.DELETE:
            return self.op_delete(req)
        if op == Op.SHUTDOWN:
            return self.op_delete({"force": True})
        if op == Op.SUBSCRIBE:
            self.subscribers.append(conn)
            return {"oom_kill": self.oom_count}
        raise ShimError("invalid_argument", f"unknown op {op}")

    def _attach(self, conn: Conn, proc: Proc, req: dict[str, Any]) -> dict[str, Any]:
        conn.attached = proc
        conn.streams = (bool(req.get("stdout", True)), bool(req.get("stderr", True)))
        conn.stdin = bool(req.get("stdin"))
        self._reply(conn, self._proc_state(proc))
        if proc.pending:
            # Output of an exec that ran before anyone attached: its first attacher gets it.
            self._send(conn, bytes(proc.pending))
            proc.pending = None
        if proc.finalized:
            conn.closing = True
            self._send(conn, encode(FrameKind.EOF, json.dumps(proc.exit).encode()))
            return None  # type: ignore[return-value]
        proc.attachers.append(conn)
        return None  # type: ignore[return-value]

    def _reply(self, conn: Conn, message: dict[str, Any]) -> None:
        self._send(conn, encode_json(message))

    def _send(self, conn: Conn, frame: bytes) -> None:
        if len(conn.wbuf) > MAX_CLIENT_BACKLOG:
            self._drop(conn)
            return
        conn.wbuf += frame
        self._flush_conn(conn)

    def _flush_conn(self, conn: Conn) -> None:
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
            self._drop(conn)
            return
        want = Poller.READ | (Poller.WRITE if conn.wbuf else 0)
        if not conn.wbuf and conn.closing:
            self._drop(conn)
            return
        if self.sel.events(fd) != want:
            self.sel.modify(fd, want, ("conn", conn))

    def _drop(self, conn: Conn) -> None:
        fd = conn.sock.fileno()
        if fd < 0:
            return
        self.sel.unregister(fd)
        self.conns.pop(fd, None)
        conn.sock.close()
        proc = conn.attached
        if proc is not None and conn in proc.attachers:
            proc.attachers.remove(conn)
            if conn.stdin and proc.stdin_once:
                self._close_stdin(proc)
        for p in self.procs.values():
            if conn in p.waiters:
                p.waiters.remove(conn)
        if conn in self.subscribers:
            self.subscribers.remove(conn)

    def _finish(self, conn: Conn) -> None:
        """After delete: the answer goes out, then the shim removes its traces and exits."""
        conn.sock.setblocking(True)
        try:
            conn.sock.sendall(conn.wbuf)
        except OSError:
            pass
        for proc in self.procs.values():
            self._close_stdio(proc)
            if proc.log:
                proc.log.close()
        self.listener.close()
        for name in os.listdir(self.dir):
            try:
                os.unlink(os.path.join(self.dir, name))
            except OSError:
                pass
        try:
            os.unlink(self.boot["socket"])
        except OSError:
            pass
        try:
            os.rmdir(self.dir)
        except OSError:
            pass
        os._exit(0)

    # ---- loop -------------------------------------------------------------------------------

    def _oom_timeout(self, timeout: float | None) -> float | None:
        if not self.oom_recheck_until:
            return timeout
        now = time.monotonic()
        if now >= self.oom_recheck_until:
            self.oom_recheck_until = 0.0
            return timeout
        if self._check_oom():
            return timeout
        return OOM_RECHECK if timeout is None else min(timeout, OOM_RECHECK)

    def serve(self) -> None:
        while True:
            timeout = self._oom_timeout(self._check_grace())
            for fd, (kind, obj), events in self.sel.select(timeout):
                if kind == "wake":
                    self._drain_wakeup()
                    self.reap()
                elif kind == "out":
                    if fd in obj.outputs:
                        self._on_output(obj, fd)
                elif kind == "stdin":
                    self._flush_stdin(obj)
                elif kind == "listen":
                    self._accept()
                elif kind == "conn":
                    self._on_conn(obj, events)
                elif kind == "oom":
                    self._on_oom_wake()
            self.process_exits()


def recv_fd(conn: socket.socket) -> list[int]:
    """The file descriptors of one SCM_RIGHTS message (the runtime's console socket)."""
    _msg, ancillary, _flags, _addr = conn.recvmsg(4096, socket.CMSG_SPACE(4))
    fds: list[int] = []
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds += [int.from_bytes(data[i : i + 4], "little") for i in range(0, len(data) - len(data) % 4, 4)]
    return fds


def describe(proc: Proc, container_id: str) -> str:
    return f"exec `{proc.exec_id}` of container {container_id}" if proc.exec_id else f"container {container_id}"


def runtime_message(stderr: bytes, errors_only: bool = False) -> str:
    """The runtime's own words: runc/crun print plain text or JSON log lines ({"msg": ...})."""
    lines: list[str] = []
    for raw in stderr.decode("utf-8", "replace").splitlines():
        raw = raw.strip()
        if not raw:
            continue
        if raw.startswith("{"):
            try:
                entry = json.loads(raw)
            except ValueError:
                entry = None
            if isinstance(entry, dict):
                if errors_only and entry.get("level") not in ("error", "fatal", "panic", None):
                    continue
                raw = str(entry.get("msg") or entry.get("message") or raw)
        elif errors_only:
            continue
        lines.append(raw)
    return "; ".join(lines[-3:])


def classify(message: str) -> str:
    """Which error kind a runtime failure is: a bundle it rejects is the caller's mistake."""
    lowered = message.lower()
    if "does not exist" in lowered or "not found" in lowered and "container" in lowered:
        return "not_found"
    if "already exists" in lowered:
        return "already_exists"
    if any(word in lowered for word in ("invalid", "config.json", "no such file", "executable file",
                                         "not a directory", "permission denied", "exec format")):
        return "invalid_argument"
    return "failed_precondition"
