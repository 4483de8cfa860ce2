"""One container's shim: its processes, the socket protocol's ops and exit records.

One single-threaded loop (loop.py) owns every file descriptor: the processes' stdio (stdio.py),
the OOM watch (oom.py), the listening socket and its clients (clients.py). The runtime's commands
(runtime.py) run to completion inside it. The ops are those of proto/skiff/shim/v1/README.md
(services/common/shimproto.py); errors travel as the kinds of services/common/errors.py.
"""

from __future__ import annotations

import _signal as signal
import _socket as socket
import os
import time

from services.common import cgroupfs
from services.common import jsonio as json
from services.common.atomic import atomic_write
from services.common.errors import AlreadyExists, FailedPrecondition, Internal, InvalidArgument, NotFound, SkiffError
from services.common.shimproto import (
    FrameKind,
    Op,
    ProcStatus,
    encode,
    encode_json,
    rfc3339_nano,
)
from services.shim.clients import Clients, Conn
from services.shim.logfile import open_log
from services.shim.loop import Poller, Reaper
from services.shim.oom import OomWatch
from services.shim.runtime import Runtime
from services.shim.stdio import Proc, Stdio, console_socket, make_pipes, receive_master

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

# Output still flowing this long after the process ended (a daemonised grandchild holding the
# pipe) no longer delays the exit report.
OUTPUT_GRACE = 2.0
LIVE = (ProcStatus.RUNNING, ProcStatus.PAUSED)


class Shim:
    # Slots, as every class of the shim's: no instance dict, whose keys a forked shim would add to
    # the class's shared keys (a write to each name's page shared with the zygote).
    __slots__ = ("dir", "boot", "id", "sel", "reaper", "runtime", "clients", "stdio", "oom", "procs",
                 "subscribers", "deleted", "released")

    def __init__(self, state_dir: str, boot: dict[str, Any]) -> None:
        self.dir = state_dir
        self.boot = boot
        self.id: str = boot["id"]
        self.sel = Poller()
        self.reaper = Reaper(self.sel)
        self.runtime = Runtime(state_dir, boot, self.reaper)
        self.clients = Clients(self.sel, boot["socket"], self._on_frame, self._forget)
        self.stdio = Stdio(self.sel, self.clients.send)
        self.oom = OomWatch(self.sel, self._tell_oom)
        self.procs: dict[str, Proc] = {}
        self.subscribers: list[Conn] = []
        self.deleted = False
        self.released = False  # the runtime's state of the stopped init deleted (_release_runtime)

    # ---- processes --------------------------------------------------------------------------

    def _launch(self, proc: Proc, args: list[str], want_stdin: bool) -> None:
        """Runs a runtime ``create`` or ``exec`` with the process's stdio wired up."""
        pid_file = os.path.join(self.dir, f"{proc.exec_id or 'init'}.pid")
        extra = ["--pid-file", pid_file]
        console: tuple[socket.socket, str] | None = None
        child: tuple[int, int, int]
        if proc.terminal:
            console = console_socket(self.dir, "c.sock")
            extra += ["--console-socket", console[1]]
            null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
            child = (null, null, null)
        else:
            child = make_pipes(proc, want_stdin)
        try:
            result = self.runtime.run(args[:1] + extra + args[1:], stdio=child)
        finally:
            for fd in set(child):
                os.close(fd)
        if result.code != 0:
            if console:
                console[0].close()
                os.unlink(console[1])
            self.stdio.close(proc)
            if result.kind == NotFound.kind:
                # What create or exec could not find (the executable, the rootfs) is named by the
                # bundle or the process spec: the caller's mistake. Here not_found means "no such process".
                result.kind = InvalidArgument.kind
            raise result.error(args[0])
        if console:
            proc.master = receive_master(*console)
            proc.outputs = {proc.master: "stdout"}
            if want_stdin:
                proc.stdin_fd = os.dup(proc.master)
                os.set_inheritable(proc.stdin_fd, False)
        with open(pid_file, "rb") as f:
            proc.pid = int(f.read().strip())
        self.stdio.watch(proc)

    def process_exits(self) -> None:
        statuses = self.reaper.statuses
        if not statuses:
            return
        by_pid = {p.pid: p for p in self.procs.values() if p.pid and p.exit is None}
        for pid, status in list(statuses.items()):
            del statuses[pid]
            proc = by_pid.get(pid)
            if proc is not None:
                self._on_exit(proc, status)

    def _on_exit(self, proc: Proc, status: int) -> None:
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0
        code = 128 + sig if sig else os.WEXITSTATUS(status)
        # Subscribers hear of an OOM kill before the exit it caused.
        self.oom.check()
        # Docker's reading: an init killed by SIGKILL in a cgroup where the OOM killer struck.
        oom = proc.exec_id == "" and sig == signal.SIGKILL and self.oom.kills() > 0
        proc.exit = {"exit_code": code, "signal": sig, "oom_killed": oom, "exited_at": rfc3339_nano()}
        if oom:
            # The counter lets highlevel tell whether it already announced this OOM live.
            proc.exit["oom_kill"] = self.oom.kills()
        proc.status = ProcStatus.STOPPED
        proc.exited_at_mono = time.monotonic()
        if proc.exec_id == "":
            # Recorded before anyone is told: a highlevel runtime that comes back reads it here.
            self.save_state()
        self._maybe_finalize(proc)

    def _maybe_finalize(self, proc: Proc, force: bool = False) -> None:
        """Once a process has exited and its output ended (or outlived it too long): tell everyone."""
        if proc.finalized or proc.exit is None:
            return
        if proc.outputs and not force:
            return
        proc.finalized = True
        self.stdio.close(proc)
        for conn in proc.attachers:
            conn.closing = True  # before the send: the flush that empties the buffer closes it
            self.clients.send(conn, encode(FrameKind.EOF, json.dumps(proc.exit).encode()))
        proc.attachers.clear()
        for conn in proc.waiters:
            self.clients.reply(conn, self._proc_state(proc))
        proc.waiters.clear()
        if proc.exec_id == "" and self.boot.get("release_on_exit"):
            # The exit is told first (sent above), then the runtime's state goes: that work overlaps
            # the exit's way to the caller, whose delete comes right after it and finds it done.
            try:
                self._release_runtime()
            except (SkiffError, OSError):
                pass  # the delete op runs the runtime's own command then

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

    def _wait_exit(self, proc: Proc) -> None:
        """After a forced delete: collect the killed init so its status is recorded."""
        deadline = time.monotonic() + 5
        while proc.exit is None and time.monotonic() < deadline:
            self.reaper.reap()
            self.process_exits()
            if proc.exit is None:
                self.reaper.wait(0.05)
        self._maybe_finalize(proc, force=True)

    def _tell_oom(self, count: int) -> None:
        notice = encode_json({"event": "oom", "oom_kill": count, "time": rfc3339_nano()})
        for conn in list(self.subscribers):
            self.clients.send(conn, notice)

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

    def _get(self, exec_id: str) -> Proc:
        proc = self.procs.get(exec_id)
        if proc is None:
            raise NotFound(f"process `{exec_id}` of container {self.id}: not found")
        return proc

    def _running_init(self) -> Proc:
        init = self.procs[""]
        if init.status not in LIVE:
            raise FailedPrecondition(f"container {self.id} is not running")
        return init

    # ---- ops --------------------------------------------------------------------------------

    def create(self) -> int:
        boot = self.boot
        init = Proc("", bool(boot.get("terminal")), bool(boot.get("stdin_once")))
        init.log = open_log(boot)
        self.procs[""] = init
        self._launch(init, ["create", "--bundle", boot["bundle"], self.id], bool(boot.get("stdin")))
        self.oom.arm(cgroupfs.memory_cgroup(init.pid))
        self.save_state()
        return init.pid

    def create_and_start(self) -> tuple[int, str]:
        """``create`` then the init's start, before the shim serves (bootstrap's ``start``): the task
        create of a ``docker start`` saves highlevel's connection to the shim and one request."""
        pid = self.create()
        init = self.procs[""]
        self._start_init(init)
        return pid, init.started_at

    def _start_init(self, init: Proc) -> None:
        self.runtime.start(self.id)
        init.started_at = rfc3339_nano()
        if init.exit is None:
            init.status = ProcStatus.RUNNING
        self.save_state()

    def op_start(self, conn: Conn, req: dict[str, Any]) -> dict[str, Any]:
        proc = self._get(req.get("exec_id", ""))
        if proc.status != ProcStatus.CREATED:
            raise FailedPrecondition(f"{proc.describe(self.id)} is {proc.status}, not created")
        if proc.exec_id == "":
            self._start_init(proc)
            return self._proc_state(proc)
        self._running_init()
        process_file = os.path.join(self.dir, f"{proc.exec_id}.json")
        atomic_write(process_file, json.dumps(proc.process).encode())
        want_stdin = proc.stdin_fd == -2
        proc.stdin_fd = -1
        self._launch(proc, ["exec", "--process", process_file, "--detach", self.id], want_stdin)
        proc.started_at = rfc3339_nano()
        if proc.exit is None:
            proc.status = ProcStatus.RUNNING
        return self._proc_state(proc)

    def op_exec(self, conn: Conn, req: dict[str, Any]) -> dict[str, Any]:
        exec_id = req.get("exec_id") or ""
        if not exec_id:
            raise InvalidArgument("exec needs an exec id")
        if exec_id in self.procs:
            raise AlreadyExists(f"exec `{exec_id}` of container {self.id} already exists")
        self._running_init()
        process = req.get("process")
        if not isinstance(process, dict) or not process.get("args"):
            raise InvalidArgument("exec needs a process spec with args")
        proc = Proc(exec_id, bool(req.get("terminal")), bool(req.get("stdin_once")))
        process["terminal"] = proc.terminal
        proc.process = process
        # -2 marks "stdin wanted" until start creates the real pipe.
        proc.stdin_fd = -2 if req.get("stdin") else -1
        self.procs[exec_id] = proc
        return self._proc_state(proc)

    def op_kill(self, conn: Conn, req: dict[str, Any]) -> dict[str, Any]:
        proc = self._get(req.get("exec_id", ""))
        sig = int(req.get("signal") or signal.SIGTERM)
        not_running = FailedPrecondition(f"{proc.describe(self.id)} is not running")
        if proc.exit is not None or proc.pid == 0:
            raise not_running
        if proc.exec_id == "":
            args = ["kill"] + (["--all"] if req.get("all") else []) + [self.id, str(sig)]
            result = self.runtime.run(args)
            if result.code != 0:
                self.reaper.reap()
                self.process_exits()
                if proc.exit is not None:
                    raise not_running
                raise result.error("kill")
        else:
            try:
                os.kill(proc.pid, sig)
            except ProcessLookupError as exc:
                raise not_running from exc
        return {}

    def op_pause(self, conn: Conn, req: dict[str, Any]) -> dict[str, Any]:
        return self._freeze(True)

    def op_resume(self, conn: Conn, req: dict[str, Any]) -> dict[str, Any]:
        return self._freeze(False)

    def _freeze(self, pause: bool) -> dict[str, Any]:
        init = self.procs[""]
        want, new = (ProcStatus.RUNNING, ProcStatus.PAUSED) if pause else (ProcStatus.PAUSED, ProcStatus.RUNNING)
        if init.status != want:
            raise FailedPrecondition(f"container {self.id} is {init.status}, not {want}")
        self.runtime.call(["pause" if pause else "resume", self.id])
        init.status = new
        self.save_state()
        return self._proc_state(init)

    def op_resize(self, conn: Conn, req: dict[str, Any]) -> dict[str, Any]:
        import fcntl
        import struct
        import termios

        proc = self._get(req.get("exec_id", ""))
        if proc.master < 0:
            raise FailedPrecondition(f"{proc.describe(self.id)} has no terminal")
        size = struct.pack("HHHH", int(req.get("height", 0)), int(req.get("width", 0)), 0, 0)
        fcntl.ioctl(proc.master, termios.TIOCSWINSZ, size)
        return {}

    def op_update(self, conn: Conn, req: dict[str, Any]) -> dict[str, Any]:
        resources = req.get("resources")
        if not isinstance(resources, dict):
            raise InvalidArgument(f"update of {self.id}: resources must be a JSON object")
        self.runtime.update(self.id, resources)
        return {}

    def op_delete(self, conn: Conn, req: dict[str, Any]) -> dict[str, Any]:
        exec_id = req.get("exec_id", "")
        proc = self._get(exec_id)
        if exec_id:
            if proc.status in LIVE and proc.exit is None:
                raise FailedPrecondition(f"{proc.describe(self.id)} is running")
            self.stdio.close(proc)
            del self.procs[exec_id]
            return self._proc_state(proc)
        if proc.exit is None and proc.status != ProcStatus.CREATED and not req.get("force"):
            raise FailedPrecondition(f"container {self.id} is {proc.status}: stop it first")
        if proc.exit is None or not self._release_runtime():
            result = self.runtime.run(["delete"] + (["--force"] if proc.exit is None else []) + [self.id])
            if result.code != 0 and result.kind != NotFound.kind and "not exist" not in result.message:
                raise result.error("delete")
        self.released = True
        if proc.exit is None and proc.pid:
            self._wait_exit(proc)
        self.deleted = True
        return self._proc_state(proc)

    def _release_runtime(self) -> bool:
        """The stopped init's runtime state deleted here (Runtime.delete_stopped), once; False: the
        runtime's ``delete`` command has to do it."""
        if not self.released:
            self.released = self.runtime.delete_stopped(self.id)
        return self.released

    def op_shutdown(self, conn: Conn, req: dict[str, Any]) -> dict[str, Any]:
        return self.op_delete(conn, {"force": True})

    def op_state(self, conn: Conn, req: dict[str, Any]) -> dict[str, Any]:
        exec_id = req.get("exec_id", "")
        state = self._proc_state(self._get(exec_id))
        if not exec_id and req.get("execs"):
            # A restarted highlevel learns the execs it had started (and their exits) here.
            state["execs"] = [self._proc_state(proc) for key, proc in self.procs.items() if key]
        return state

    def op_wait(self, conn: Conn, req: dict[str, Any]) -> dict[str, Any] | None:
        """Answered once the process has exited and its output drained (now, if it has)."""
        proc = self._get(req.get("exec_id", ""))
        if proc.finalized:
            return self._proc_state(proc)
        proc.waiters.append(conn)
        return None

    def op_attach(self, conn: Conn, req: dict[str, Any]) -> None:
        """Answers with the state, then streams the output frames (and takes stdin) until EOF."""
        proc = self._get(req.get("exec_id", ""))
        conn.attached = proc
        conn.streams = (bool(req.get("stdout", True)), bool(req.get("stderr", True)))
        conn.stdin = bool(req.get("stdin"))
        self.clients.reply(conn, self._proc_state(proc))
        if proc.pending is not None and (conn.streams[0] or conn.streams[1]):
            # Output of an exec that ran before anyone attached: its first reader gets it (not a
            # stdin writer, which may come first).
            self.clients.send(conn, bytes(proc.pending))
            proc.pending = None
        if proc.finalized:
            conn.closing = True
            self.clients.send(conn, encode(FrameKind.EOF, json.dumps(proc.exit).encode()))
            return
        proc.attachers.append(conn)

    def op_close_stdin(self, conn: Conn, req: dict[str, Any]) -> dict[str, Any]:
        self.stdio.close_stdin(self._get(req.get("exec_id", "")))
        return {}

    def op_subscribe(self, conn: Conn, req: dict[str, Any]) -> dict[str, Any]:
        self.subscribers.append(conn)
        return {"oom_kill": self.oom.count}

    def op_pids(self, conn: Conn, req: dict[str, Any]) -> dict[str, Any]:
        return {"pids": self.runtime.pids(self.id)}

    def op_stats(self, conn: Conn, req: dict[str, Any]) -> dict[str, Any]:
        return {"stats": self.runtime.stats(self.id)}

    # ---- connections ------------------------------------------------------------------------

    def _on_frame(self, conn: Conn, kind: int, payload: bytes) -> None:
        if kind == FrameKind.STDIN and conn.attached is not None:
            self.stdio.write_stdin(conn.attached, payload)
            return
        if kind == FrameKind.STDIN_CLOSE and conn.attached is not None:
            self.stdio.close_stdin(conn.attached)
            return
        if kind != FrameKind.JSON:
            return
        try:
            req = json.loads(payload)
            op = req.get("op")
            handler = _OPS[op]
        except (ValueError, AttributeError, KeyError, TypeError):
            self.clients.reply(conn, {"error": {"kind": InvalidArgument.kind, "message": "bad shim request"}})
            return
        try:
            reply = handler(self, conn, req)
        except SkiffError as exc:
            reply = {"error": {"kind": exc.kind, "message": exc.message}}
        except OSError as exc:
            reply = {"error": {"kind": Internal.kind, "message": f"{op}: {exc}"}}
        if reply is not None:
            self.clients.reply(conn, reply)
        if self.deleted:
            self._finish(conn)

    def _forget(self, conn: Conn) -> None:
        """A client went away: it no longer waits, listens or is attached (a stdin_once attacher closes
        a pipe stdin)."""
        proc = conn.attached
        if proc is not None and conn in proc.attachers:
            proc.attachers.remove(conn)
            if conn.stdin and proc.stdin_once and not proc.terminal:
                # dockerd closes stdin at the attacher's end only without a tty: a terminal's
                # attacher detaches (ctrl-p ctrl-q) and the process keeps reading.
                self.stdio.close_stdin(proc)
        for p in self.procs.values():
            if conn in p.waiters:
                p.waiters.remove(conn)
        if conn in self.subscribers:
            self.subscribers.remove(conn)

    def _finish(self, conn: Conn) -> None:
        """After delete: the shim removes its traces, then the answer goes out and it exits. Once it has
        answered it touches no file again: highlevel does not wait for its exit, and a task of the same
        id (a restart) may be made at once in the same folder."""
        for proc in self.procs.values():
            self.stdio.close(proc)
            if proc.log:
                proc.log.close()
        self.clients.listener.close()
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
        self.clients.send_now(conn)
        os._exit(0)

    # ---- loop -------------------------------------------------------------------------------

    def serve(self) -> None:
        while True:
            timeout = self.oom.timeout(self._check_grace())
            for fd, (kind, obj), events in self.sel.select(timeout):
                if kind == "wake":
                    self.reaper.drain()
                    self.reaper.reap()
                elif kind == "out":
                    if fd in obj.outputs and self.stdio.on_output(obj, fd):
                        self._maybe_finalize(obj)
                elif kind == "stdin":
                    self.stdio.flush_stdin(obj)
                elif kind == "listen":
                    self.clients.accept()
                elif kind == "conn":
                    self.clients.on_events(obj, events)
                elif kind == "oom":
                    self.oom.on_wake()
            self.process_exits()


# Every op of the protocol (shimproto.Op.ALL; tests/unit/test_shim_protocol.py checks it), by name.
# A handler returns the reply, or None: the answer comes later (wait) or the op streams it (attach).
_OPS: dict[str, Callable[[Shim, Conn, dict[str, Any]], dict[str, Any] | None]] = {
    Op.STATE: Shim.op_state,
    Op.START: Shim.op_start,
    Op.WAIT: Shim.op_wait,
    Op.KILL: Shim.op_kill,
    Op.RESIZE: Shim.op_resize,
    Op.ATTACH: Shim.op_attach,
    Op.EXEC: Shim.op_exec,
    Op.CLOSE_STDIN: Shim.op_close_stdin,
    Op.PAUSE: Shim.op_pause,
    Op.RESUME: Shim.op_resume,
    Op.DELETE: Shim.op_delete,
    Op.SHUTDOWN: Shim.op_shutdown,
    Op.SUBSCRIBE: Shim.op_subscribe,
    Op.PIDS: Shim.op_pids,
    Op.UPDATE: Shim.op_update,
    Op.STATS: Shim.op_stats,
}
