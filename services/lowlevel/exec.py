"""``exec``: a new process inside a running container's namespaces and cgroup."""

from __future__ import annotations

import _socket as socket

from services.common import jsonio as json
from services.common.errors import FailedPrecondition, InvalidArgument
from services.lowlevel import fastos as os
from services.lowlevel import prime, state
from services.lowlevel import syscalls as sc
from services.lowlevel.create import Sync, _child_main, _expect, _send
from services.lowlevel.lifecycle import cgroup_of, load_spec_of
from services.lowlevel.process import (
    exec_process,
    mark_fds_cloexec,
    preload_modules,
    prepare_identity,
    validate_process,
)

# typing costs milliseconds of import on every launch; annotations are strings here.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


# The order to enter namespaces: the user namespace grants the rights for the rest, mnt comes last.
_JOIN_ORDER = ("user", "ipc", "uts", "network", "pid", "cgroup", "time", "mount")


class ExecOptions:
    __slots__ = ("root", "container_id", "process", "console_socket", "pid_file", "detach", "preserve_fds")

    def __init__(
        self,
        root: str,
        container_id: str,
        process: dict[str, Any],
        console_socket: str | None = None,
        pid_file: str | None = None,
        detach: bool = False,
        preserve_fds: int = 0,
    ) -> None:
        self.root = root
        self.container_id = container_id
        self.process = process
        self.console_socket = console_socket
        self.pid_file = pid_file
        self.detach = detach
        self.preserve_fds = preserve_fds


def process_from_args(
    spec: dict[str, Any],
    args: list[str],
    *,
    tty: bool,
    cwd: str | None,
    env: list[str],
    user: str | None,
    caps: list[str],
    no_new_privs: bool,
) -> dict[str, Any]:
    """An exec process built from flags, inheriting the container's process settings like runc."""
    base = dict(spec.get("process") or {})
    base["args"] = args
    base["terminal"] = tty
    if cwd:
        base["cwd"] = cwd
    if env:
        merged = {e.split("=", 1)[0]: e for e in base.get("env") or []}
        merged.update({e.split("=", 1)[0]: e for e in env})
        base["env"] = list(merged.values())
    if user:
        uid, _, gid = user.partition(":")
        base["user"] = {"uid": int(uid), "gid": int(gid or 0)}
    if caps:
        current = base.get("capabilities") or {}
        base["capabilities"] = {
            k: sorted(set(current.get(k) or []) | set(caps))
            for k in ("bounding", "effective", "permitted", "ambient", "inheritable")
        }
    if no_new_privs:
        base["noNewPrivileges"] = True
    base.pop("consoleSize", None)
    return base


def load_process_file(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            process = json.loads(f.read())
    except FileNotFoundError:
        raise InvalidArgument(f"open process file {path}: no such file or directory") from None
    except ValueError as e:
        raise InvalidArgument(f"parse process file {path}: {e}") from None
    if not isinstance(process, dict) or not process.get("args"):
        raise InvalidArgument(f"process file {path}: args must not be empty")
    return process


def exec_in_container(opts: ExecOptions) -> int:
    """Start the process; returns its pid (detached) or waits and returns its exit code."""
    st = state.load(opts.root, opts.container_id)
    status = state.current_status(opts.root, st)
    if status not in (state.Status.RUNNING, state.Status.CREATED):
        raise FailedPrecondition(f"cannot exec in a {status} container")
    spec = load_spec_of(opts.root, opts.container_id)
    process = opts.process
    validate_process(process)
    if process.get("terminal") and not opts.console_socket:
        raise InvalidArgument("cannot allocate tty if runtime is not passed a --console-socket")
    ns_fds = _open_namespaces(st.pid)
    preload_modules(process, (spec.get("linux") or {}).get("seccomp"), None)
    console = None
    if process.get("terminal"):
        from services.lowlevel.console import connect_console_socket

        console = connect_console_socket(opts.console_socket or "")
    if not opts.detach:
        sc.prctl(sc.PR_SET_CHILD_SUBREAPER, 1)
    parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    seccomp = (spec.get("linux") or {}).get("seccomp")
    pid = os.fork()
    if pid == 0:
        parent_sock.close()
        _child_main(
            child_sock, lambda: _exec_intermediate(child_sock, ns_fds, process, seccomp, console, opts.preserve_fds)
        )
    child_sock.close()
    for fd, _, _ in ns_fds:
        os.close(fd)
    if console is not None:
        console.close()
    try:
        cgroup_of(st).add(pid)
        prime.done()
        _send(parent_sock, Sync.GO)
        exec_pid = int(_expect(parent_sock, Sync.INIT_PID))
        # The process speaks only after this: its READY can never overtake INIT_PID.
        _send(parent_sock, Sync.CGROUP_JOINED)
        os.waitpid(pid, 0)
        _expect(parent_sock, Sync.READY)
    except BaseException:
        try:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        raise
    finally:
        parent_sock.close()
    if opts.pid_file:
        from services.lowlevel.create import _write_pid_file

        _write_pid_file(opts.pid_file, exec_pid)
    if opts.detach:
        return exec_pid
    from services.lowlevel.run import wait_forwarding_signals

    return wait_forwarding_signals(exec_pid)


def _open_namespaces(pid: int) -> list[tuple[int, int, str]]:
    fds: list[tuple[int, int, str]] = []
    for kind in _JOIN_ORDER:
        name = sc.NAMESPACE_FILES[kind]
        path = f"/proc/{pid}/ns/{name}"
        try:
            if os.stat(path).st_ino == os.stat(f"/proc/self/ns/{name}").st_ino:
                continue
            fds.append((os.open(path, os.O_RDONLY | os.O_CLOEXEC), sc.NAMESPACE_FLAGS[kind], path))
        except FileNotFoundError:
            continue
    return fds


def _exec_intermediate(
    sock: socket.socket,
    ns_fds: list[tuple[int, int, str]],
    process: dict[str, Any],
    seccomp: dict[str, Any] | None,
    console: socket.socket | None,
    preserve_fds: int,
) -> None:
    _expect(sock, Sync.GO)
    for fd, flag, path in ns_fds:
        sc.setns(fd, flag, path)
    pid = os.fork()
    if pid != 0:
        _send(sock, Sync.INIT_PID, pid)
        return

    def body() -> None:
        _expect(sock, Sync.CGROUP_JOINED)
        os.setsid()
        if console is not None:
            from services.lowlevel.console import setup_console

            setup_console(console, process.get("consoleSize"))
        mark_fds_cloexec(3 + preserve_fds)
        path, env = prepare_identity(process, seccomp)
        _send(sock, Sync.READY)
        sock.close()
        exec_process(process, path, env, seccomp)

    _child_main(sock, body)
