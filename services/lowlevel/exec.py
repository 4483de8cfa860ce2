"""``exec``: a new process inside a running container's namespaces and cgroup."""

from __future__ import annotations

import _socket as socket

from services.common import jsonio as json
from services.common.errors import FailedPrecondition, InvalidArgument
from services.lowlevel import fastos as os
from services.lowlevel import log, prime, state
from services.lowlevel import syscalls as sc
from services.lowlevel.lifecycle import cgroup_of, load_spec_of
from services.lowlevel.process import (
    exec_process,
    mark_fds_cloexec,
    preload_modules,
    prepare_identity,
    validate_process,
)
from services.lowlevel.sync import Sync, child_main, expect, send

# typing costs milliseconds of import on every launch; annotations are strings here.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


# The order to enter namespaces: the user namespace grants the rights for the rest, mnt comes last.
_JOIN_ORDER = ("user", "ipc", "uts", "network", "pid", "cgroup", "time", "mount")


class ExecOptions:
    __slots__ = (
        "root",
        "container_id",
        "process",
        "console_socket",
        "pid_file",
        "detach",
        "preserve_fds",
        "sub_cgroups",
        "ignore_paused",
    )

    def __init__(
        self,
        root: str,
        container_id: str,
        process: dict[str, Any],
        console_socket: str | None = None,
        pid_file: str | None = None,
        detach: bool = False,
        preserve_fds: int = 0,
        sub_cgroups: list[str] | None = None,
        ignore_paused: bool = False,
    ) -> None:
        self.root = root
        self.container_id = container_id
        self.process = process
        self.console_socket = console_socket
        self.pid_file = pid_file
        self.detach = detach
        self.preserve_fds = preserve_fds
        self.sub_cgroups = sub_cgroups or []  # exec --cgroup values: "path" or "ctrl[,ctrl]:path"
        self.ignore_paused = ignore_paused


def add_gids(process: dict[str, Any], gids: list[str]) -> None:
    """``exec --additional-gids``: groups on top of the process's own, as runc's -g."""
    if not gids:
        return
    user = dict(process.get("user") or {})
    extra = list(user.get("additionalGids") or [])
    for g in gids:
        try:
            extra.append(int(g))
        except ValueError:
            raise InvalidArgument(f'invalid additional-gids value "{g}"') from None
    user["additionalGids"] = extra
    process["user"] = user


# runc's words before an exec's own failures, which scripts match on.
_NEW_PARENT = "unable to create new parent process: "


def sub_cgroup_paths(paths: dict[str, str], args: list[str]) -> dict[str, str]:
    """The folders an exec joins with ``--cgroup``, checked and worded as runc's exec does.

    One bare path applies to every hierarchy; "ctrl[,ctrl]:path" to the named ones only. Each
    must lie inside the container's own folder.
    """
    if not args:
        return paths
    wanted: dict[str, str] = {}
    for arg in args:
        parts = arg.split(":")
        if len(parts) > 2:
            raise InvalidArgument(f"invalid --cgroup argument: {arg}")
        if len(parts) == 1:
            if len(args) != 1:
                raise InvalidArgument(f"invalid --cgroup argument: {arg} (missing <controller>: prefix)")
            wanted[""] = arg
        else:
            for ctrl in parts[0].split(","):
                wanted[ctrl] = parts[1]
    if "" in wanted:  # a bare path (the only argument): every hierarchy
        targets = {name: wanted[""] for name in paths}
    else:
        targets = {}
        for ctrl, add in wanted.items():
            if ctrl not in paths:
                raise InvalidArgument(f"{_NEW_PARENT}unknown controller {ctrl} in SubCgroupPaths")
            targets[ctrl] = add
    out = dict(paths)
    for name, add in targets.items():
        base = paths[name]
        sub = os.path.normpath(base + "/" + add)
        if sub != base and not sub.startswith(base + "/"):
            raise InvalidArgument(f"{_NEW_PARENT}{add} is not a sub cgroup path")
        out[name] = sub
    return out


def join_cgroups(paths: dict[str, str], pid: int) -> None:
    """Write ``pid`` into every folder's cgroup.procs, failing as runc words it."""
    from services.common.errors import SyscallError
    from services.lowlevel.cgroups.files import add_pid

    for folder in dict.fromkeys(paths.values()):
        try:
            add_pid(folder, pid)
        except SyscallError as e:
            reason = os.strerror(e.errno).lower()
            raise FailedPrecondition(
                f"unable to start container process: error adding pid {pid} to cgroups: "
                f"failed to write {pid}: open {folder}/cgroup.procs: {reason}"
            ) from None


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
    allowed = (state.Status.RUNNING, state.Status.CREATED, state.Status.PAUSED) if opts.ignore_paused else (
        state.Status.RUNNING,
        state.Status.CREATED,
    )
    if status not in allowed:
        raise FailedPrecondition(f"cannot exec in a {status} container")
    cgroup = cgroup_of(st)
    cgroup_paths = sub_cgroup_paths(cgroup.paths(), opts.sub_cgroups)
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
        child_main(
            child_sock, lambda: _exec_intermediate(child_sock, ns_fds, process, seccomp, console, opts.preserve_fds)
        )
    child_sock.close()
    for fd, _, _ in ns_fds:
        os.close(fd)
    if console is not None:
        console.close()
    try:
        # A paused container's cgroup freezes the intermediate here (exec --ignore-paused):
        # it goes on once the container is resumed.
        join_cgroups(cgroup_paths, pid)
        prime.done()
        send(parent_sock, Sync.GO)
        exec_pid = int(expect(parent_sock, Sync.INIT_PID))
        # The process speaks only after this: its READY can never overtake INIT_PID.
        send(parent_sock, Sync.CGROUP_JOINED)
        os.waitpid(pid, 0)
        expect(parent_sock, Sync.READY)
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
    expect(sock, Sync.GO)
    # The debug records name the steps as runc's do (its tests look for them).
    log.debug("nsexec container setup")
    for fd, flag, path in ns_fds:
        sc.setns(fd, flag, path)
    pid = os.fork()
    if pid != 0:
        send(sock, Sync.INIT_PID, pid)
        return

    def body() -> None:
        expect(sock, Sync.CGROUP_JOINED)
        os.setsid()
        if console is not None:
            from services.lowlevel.console import setup_console

            setup_console(console, process.get("consoleSize"))
        mark_fds_cloexec(3 + preserve_fds)
        log.debug("child process in init()")
        path, env = prepare_identity(process, seccomp)
        log.debug("setns_init: about to exec")
        send(sock, Sync.READY)
        sock.close()
        exec_process(process, path, env, seccomp)

    child_main(sock, body)
