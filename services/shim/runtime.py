"""The OCI runtime's commands, run by the shim: ``<runtime> --root R --log L --log-format json ARGS``.

skiff-lowlevel runs in a forked child of the shim (its in-process fork: the one declared import of
another service's modules, a measured speed-up); a hookless container's start, and its delete once
stopped, run in the shim itself. Other runtimes (runc, crun) are posix_spawn'ed.
A failure becomes the typed error the runtime logged (services/common/runtime_output.py).
Commands run to completion inside the loop (tens of milliseconds; the pipes buffer the
container's output meanwhile), reaping while they wait.
"""

from __future__ import annotations

import _signal as signal
import os
import select
import sys
import time

from services.common import jsonio as json
from services.common.atomic import atomic_write
from services.common.errors import ERROR_BY_KIND, FailedPrecondition, Internal, NotFound, SkiffError
from services.common.runtime_output import runtime_failure

TYPE_CHECKING = False
if TYPE_CHECKING:
    from services.shim.loop import Reaper

READ_CHUNK = 65536
RUNTIME_TIMEOUT = 60.0
MAX_FD = 1 << 20
LOGGED_MAX = 65536  # of the runtime's log, read from where the failed command began


def failure(kind: str, message: str) -> SkiffError:
    """The typed error of an ErrorKind value (an unknown one is internal)."""
    return ERROR_BY_KIND.get(kind, Internal)(message)


class RuntimeResult:
    __slots__ = ("code", "out", "kind", "message")

    def __init__(self, code: int, out: bytes = b"", kind: str = "", message: str = "") -> None:
        self.code = code
        self.out = out  # stdout, when captured
        self.kind = kind  # on failure: an ErrorKind value
        self.message = message

    def error(self, command: str) -> SkiffError:
        return failure(self.kind, self.message or f"runtime {command} exited with {self.code}")


class Runtime:
    __slots__ = ("dir", "argv", "name_len", "in_process", "root", "log_path", "reaper")

    def __init__(self, state_dir: str, boot: dict, reaper: Reaper) -> None:
        self.dir = state_dir
        self.argv: list[str] = list(boot["runtime"]) + ["--root", boot["runtime_root"]]
        self.name_len = len(boot["runtime"])
        self.in_process = boot.get("runtime_name") == "skiff-lowlevel" and os.environ.get(
            "SKIFF_SHIM_FORK_RUNTIME", "1") != "0"
        self.root: str = boot["runtime_root"]
        # The runtime's own errors go to its log: its stderr may be the container's stderr pipe.
        self.log_path = os.path.join(state_dir, "runtime.log")
        self.reaper = reaper

    def call(self, args: list[str], capture: bool = False) -> bytes:
        """Runs a command that must succeed; returns its stdout (if ``capture``), raises its typed error."""
        result = self.run(args, capture=capture)
        if result.code != 0:
            raise result.error(args[0])
        return result.out

    def start(self, container_id: str) -> None:
        """The init's start. skiff-lowlevel's, for a container with no poststart hook, runs right here:
        it is only the exec fifo's byte read (``skiff-lowlevel start`` does the same), so the fork,
        the child's work and its reaping are saved on every launch. A hook runs in a child of its
        own (the shim's reaper would take the hook's exit from its waiter), so that case forks."""
        if self.in_process:
            from services.lowlevel import lifecycle, state  # preloaded by the zygote: shared, no import

            if state.hookless(self.root, container_id):
                # The status checks of `skiff-lowlevel start` are the shim's own (op_start): only the
                # release runs here, each line of it a write to a code object's page shared with the zygote.
                lifecycle.release_init(self.root, container_id)
                return
        self.call(["start", container_id])

    def delete_stopped(self, container_id: str) -> bool:
        """``delete`` of a container whose init has exited, run right here when it is skiff-lowlevel's
        and has no poststop hook: no fork, no child to reap, on the path of every removal. The
        container has ended and its shim's end follows, so the pages shared with the zygote that
        the delete's code writes to are not kept for long. False: the caller runs the command
        (another runtime, or a hook to run)."""
        if not self.in_process:
            return False
        from services.lowlevel import lifecycle, state  # preloaded by the zygote: shared, no import

        if not state.hookless(self.root, container_id):
            return False
        try:
            lifecycle.delete(self.root, container_id, force=False)
        except NotFound:
            pass  # deleted already: as the command's "does not exist", not an error to the caller
        return True

    def pids(self, container_id: str) -> list[int]:
        """The pids in the container's cgroup (``ps --format json``)."""
        out = self.call(["ps", "--format", "json", container_id], capture=True)
        try:
            return [int(p) for p in json.loads(out or b"[]") or []]
        except (ValueError, TypeError) as exc:
            raise Internal(f"pids of {container_id}: runtime printed no JSON list: {exc}") from exc

    def update(self, container_id: str, resources: dict) -> None:
        """New limits (an OCI ``linux.resources`` object) through ``update --resources FILE``."""
        path = os.path.join(self.dir, "resources.json")
        atomic_write(path, json.dumps(resources).encode(), durable=False)
        try:
            self.call(["update", "--resources", path, container_id])
        finally:
            os.unlink(path)

    def stats(self, container_id: str) -> dict:
        """The cgroup's statistics (``events --stats``: one ``{"type": "stats", "data": ...}`` line)."""
        out = self.call(["events", "--stats", container_id], capture=True)
        try:
            return json.loads(out.decode().strip().splitlines()[0]).get("data") or {}
        except (ValueError, IndexError, AttributeError) as exc:
            raise Internal(f"stats of {container_id}: runtime printed no JSON: {exc}") from exc

    def run(self, args: list[str], stdio: tuple[int, int, int] | None = None, timeout: float = RUNTIME_TIMEOUT,
            capture: bool = False) -> RuntimeResult:
        """Runs ``<runtime> --root R args...``; with ``stdio`` the command gets those fds (its stderr
        is then not read), else /dev/null and pipes (stdout read only if ``capture``)."""
        pipes: dict[int, list[bytes]] = {}
        ours: list[int] = []  # the child's ends, closed here once it runs
        null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        ours.append(null)
        err_r = out_r = -1
        if stdio is None:
            err_r, err_w = os.pipe2(os.O_CLOEXEC)
            pipes[err_r] = []
            ours.append(err_w)
            out_w = null
            if capture:
                out_r, out_w = os.pipe2(os.O_CLOEXEC)
                pipes[out_r] = []
                ours.append(out_w)
            fds = (null, out_w, err_w)
        else:
            fds = stdio
        try:
            offset = os.path.getsize(self.log_path)
        except OSError:
            offset = 0
        argv = self.argv + ["--log", self.log_path, "--log-format", "json"] + args
        try:
            if self.in_process:
                pid = self._fork(argv[self.name_len:], fds)
            else:
                actions = [(os.POSIX_SPAWN_DUP2, fd, target) for target, fd in enumerate(fds)]
                pid = os.posix_spawn(argv[0], argv, os.environ, file_actions=actions,
                                     setsigdef=(signal.SIGPIPE, signal.SIGXFSZ, signal.SIGCHLD, signal.SIGTERM))
        except OSError as exc:
            for fd in ours + list(pipes):
                os.close(fd)
            raise FailedPrecondition(f"run runtime `{argv[0]}`: {exc.strerror}") from exc
        for fd in ours:
            os.close(fd)
        status = self._wait(pid, pipes, timeout)
        code = os.waitstatus_to_exitcode(status)
        out = b"".join(pipes.get(out_r, []))
        if code == 0:
            return RuntimeResult(0, out)
        logged = b""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                logged = f.read(LOGGED_MAX)
        except OSError:
            pass
        kind, message = runtime_failure(logged, b"".join(pipes.get(err_r, [])))
        return RuntimeResult(code, out, kind, message)

    def _wait(self, pid: int, pipes: dict[int, list[bytes]], timeout: float) -> int:
        """Reaps until ``pid`` ended, reading its pipes meanwhile; closes them. Returns its wait status."""
        reaper = self.reaper
        deadline = time.monotonic() + timeout
        open_fds = list(pipes)
        while True:
            reaper.reap()
            if pid in reaper.statuses:
                status = reaper.statuses.pop(pid)
                break
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + 5
                continue
            ready = select.select([reaper.wake_r, *open_fds], [], [], min(left, 1.0))[0]
            if reaper.wake_r in ready:
                reaper.drain()
            for fd in open_fds[:]:
                if fd in ready:
                    data = os.read(fd, READ_CHUNK)
                    if data:
                        pipes[fd].append(data)
                    else:
                        open_fds.remove(fd)
        for fd in pipes:
            if fd in open_fds:
                # What is left in the pipe after the exit (a grandchild may still hold its end).
                os.set_blocking(fd, False)
                try:
                    while data := os.read(fd, READ_CHUNK):
                        pipes[fd].append(data)
                except BlockingIOError:
                    pass
            os.close(fd)
        return status

    @staticmethod
    def _fork(args: list[str], stdio: tuple[int, int, int]) -> int:
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
            try:
                os.write(2, f"skiff-lowlevel: {exc!r}\n".encode())
            except OSError:
                pass
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            except Exception:  # noqa: BLE001, S110 - the child exits whatever its streams say
                pass
            os._exit(code)
