"""A container's birth, top to bottom.

Up to three processes, as in runc: the *parent* (this command) makes the state folder and the
cgroup; the *intermediate* joins or unshares namespaces (the parent maps its user namespace) and
forks the *init*, which becomes PID 1 of the new pid namespace, builds the root filesystem, tells
the parent it is ready, and blocks on the exec fifo until ``start``. Without a user namespace or
a joined pid namespace the parent forks the init itself (``_init_forked_directly``). They speak
over a SEQPACKET socket pair with the named messages of ``Sync``.

Every launch counts (bench/lowlevel.py): the parent forks as early as it can, then does its
share (cgroup folders, config.json, state, resources) while the init builds its root
filesystem; Python work is kept before the fork (after it, each page first written costs a
copy-on-write fault), and prime.py has the cgroup lock's grace period elapse during start-up.
"""

from __future__ import annotations

import _socket as socket
import _thread

from services.common import jsonio as json
from services.common.errors import ERROR_BY_KIND, FailedPrecondition, Internal, InvalidArgument, SkiffError
from services.lowlevel import fastos as os
from services.lowlevel import hooks, log, mounts, prime, state, sync
from services.lowlevel import syscalls as sc
from services.lowlevel.process import (
    exec_process,
    mark_fds_cloexec,
    preload_modules,
    prepare_identity,
    set_oom_score_adj,
)
from services.lowlevel.spec import load_spec_checked, rootfs_path

# typing costs milliseconds of import on every launch; annotations are strings here.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from services.lowlevel.cgroups import Cgroup


class CreateOptions:
    __slots__ = ("root", "container_id", "bundle", "pid_file", "console_socket", "no_pivot", "preserve_fds")

    def __init__(
        self,
        root: str,
        container_id: str,
        bundle: str,
        pid_file: str | None = None,
        console_socket: str | None = None,
        no_pivot: bool = False,
        preserve_fds: int = 0,
    ) -> None:
        self.root = root
        self.container_id = container_id
        self.bundle = bundle
        self.pid_file = pid_file
        self.console_socket = console_socket
        self.no_pivot = no_pivot
        self.preserve_fds = preserve_fds


class Created:
    __slots__ = ("state", "spec", "cgroup")

    def __init__(self, st: state.ContainerState, spec: dict[str, Any], cgroup: Cgroup) -> None:
        self.state = st
        self.spec = spec
        self.cgroup = cgroup


def create_container(opts: CreateOptions) -> Created:
    """Make the container up to the point where it waits for ``start``. Nothing is left on failure.

    The children are forked as early as they can be, once the spec is read and the state folder
    made: the parent makes the cgroup folders while they unshare their namespaces (the init
    waits for them before it bind-mounts them), then writes config.json and the state and
    applies the resources while the init builds its root filesystem.
    """
    state.validate_id(opts.container_id)
    bundle = os.path.abspath(opts.bundle)
    spec = load_spec_checked(bundle)
    if (spec.get("process") or {}).get("terminal") and not opts.console_socket:
        raise InvalidArgument("cannot allocate tty if runtime is not passed a --console-socket")
    linux = spec.get("linux") or {}
    from services.lowlevel.cgroups import open_cgroup

    cgroup = open_cgroup(linux.get("cgroupsPath") or None, opts.container_id)
    check_cgroup_unused(cgroup)
    directory = state.make_container_dir(opts.root, opts.container_id)
    st = state.ContainerState(
        id=opts.container_id,
        bundle=bundle,
        rootfs=rootfs_path(spec, bundle),
        created=state.now_rfc3339(),
        annotations=spec.get("annotations") or {},
        cgroups_path=linux.get("cgroupsPath") or "",
        no_pivot=opts.no_pivot,
    )
    made: list[Cgroup] = []  # the cgroup, once there is one to undo
    init_pid = 0
    netns: _NetnsMaker | None = None
    try:
        namespaces = linux.get("namespaces") or []
        new_net = any(ns["type"] == "network" and not ns.get("path") for ns in namespaces)
        if new_net and _init_forked_directly(spec, namespaces):
            netns = _NetnsMaker()
        fifo = os.path.join(directory, state.EXEC_FIFO)
        os.mkfifo(fifo, 0o622)
        # As runc: whatever the umask, the init may open it for writing after it switched user.
        os.chmod(fifo, 0o622)

        # Python work before the fork, system calls after: in a forked process every page first
        # written costs a copy-on-write fault (~4.5 us here), which made the same cgroup lookup
        # 2.5 times slower after the fork than before it.
        resources = resources_with_default_devices(linux)
        config_text = json.dumps(spec)

        def make_cgroup() -> Cgroup:
            """The parent's first share, done while the children unshare their namespaces."""
            made.append(cgroup)
            cgroup.create()
            return cgroup

        def meanwhile(cgroup: Cgroup) -> None:
            """The parent's second share, done while the init builds its root filesystem."""
            with open(os.path.join(directory, state.CONFIG_FILE), "w") as f:
                f.write(config_text)
            state.save(opts.root, st)
            cgroup.set(resources)

        init_pid = _spawn(spec, st, fifo, opts, make_cgroup, meanwhile, netns)
        if opts.pid_file:
            _write_pid_file(opts.pid_file, init_pid)
    except BaseException:
        _undo(opts.root, st, made[0] if made else None, init_pid)
        raise
    finally:
        if netns is not None:
            netns.close()
    return Created(st, spec, made[0])


def check_cgroup_unused(cgroup: Cgroup) -> None:
    """As runc's factory: a frozen cgroup is refused (the init would hang in it), one that already
    has tasks is only warned about (runc 1.1 still runs a container there)."""
    paths = cgroup.paths()
    probe = paths.get("freezer") or next(iter(paths.values()), None)
    if probe is None or not os.path.isdir(probe):
        return  # the usual case, a new folder: one stat, no failed reads
    try:
        frozen = cgroup.frozen()
    except SkiffError:
        frozen = False  # no folder yet, or no freezer on this host
    if frozen:
        raise FailedPrecondition("container's cgroup unexpectedly frozen")
    try:
        pids = cgroup.pids()
    except SkiffError:
        pids = []
    if pids:
        from services.lowlevel import log

        log.warning(f"container's cgroup is not empty: {len(pids)} process(es) found")


# What runc allows on top of the spec's device rules: mknod of anything, the standard character
# devices, ptys and tun.
DEFAULT_ALLOWED_DEVICES: tuple[dict[str, Any], ...] = (
    {"allow": True, "type": "c", "access": "m"},
    {"allow": True, "type": "b", "access": "m"},
    *(
        {"allow": True, "type": "c", "major": major, "minor": minor, "access": "rwm"}
        for major, minor in ((1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 1), (5, 2), (10, 200))
    ),
    {"allow": True, "type": "c", "major": 136, "access": "rwm"},
)


def resources_with_default_devices(linux: dict[str, Any]) -> dict[str, Any]:
    """The spec's device rules, then runc's defaults. The nodes of ``linux.devices`` get no rule
    of their own, as with runc: the rules decide what the container may use (a FIFO, which no
    device cgroup rule can name, is just made)."""
    resources = dict(linux.get("resources") or {})
    rules = list(resources.get("devices") or [])
    rules += DEFAULT_ALLOWED_DEVICES
    resources["devices"] = rules
    return resources


def _write_pid_file(path: str, pid: int) -> None:
    from services.common.atomic import atomic_write

    atomic_write(path, str(pid).encode(), durable=False, mode=0o666)


def _undo(root: str, st: state.ContainerState, cgroup: Cgroup | None, init_pid: int) -> None:
    if init_pid > 0:
        try:
            os.kill(init_pid, 9)
        except ProcessLookupError:
            pass
        state.wait_gone(init_pid, None)
    if cgroup is not None:
        try:
            cgroup.kill_all(9)
            cgroup.destroy()
        except SkiffError:
            pass
    state.remove_container_dir(root, st.id)


def _spawn(
    spec: dict[str, Any],
    st: state.ContainerState,
    fifo: str,
    opts: CreateOptions,
    make_cgroup: Callable[[], Cgroup],
    meanwhile: Callable[[Cgroup], None],
    netns: _NetnsMaker | None = None,
) -> int:
    linux = spec.get("linux") or {}
    namespaces = linux.get("namespaces") or []
    new_user = any(ns["type"] == "user" and not ns.get("path") for ns in namespaces)
    console = None
    if (spec.get("process") or {}).get("terminal"):
        from services.lowlevel.console import connect_console_socket

        console = connect_console_socket(opts.console_socket or "")
    # Import (and dlopen) what the init needs while we are still the host's root: in a new user
    # namespace the init may not read the interpreter's files, and after pivot_root it cannot see them.
    preload_modules(spec.get("process") or {}, linux.get("seccomp"), spec.get("hooks"))
    direct = _init_forked_directly(spec, namespaces)
    net_fd = netns.result() if netns is not None and direct else -1
    parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    if direct and any(ns["type"] == "pid" for ns in namespaces):
        sc.unshare(sc.CLONE_NEWPID)  # for our children only: the init will be PID 1 there
    pid = os.fork()
    if pid == 0:  # the intermediate, or the init itself
        parent_sock.close()
        if direct:
            sync.child_main(child_sock, lambda: _direct_init(child_sock, spec, st, fifo, opts, console, net_fd))
        sync.child_main(child_sock, lambda: _intermediate(child_sock, spec, st, fifo, opts, console, new_user))
    child_sock.close()
    if console is not None:
        console.close()
    init_pid = pid if direct else 0
    unblocked = False
    try:
        if new_user:
            sync.expect(parent_sock, sync.Sync.USERNS_CREATED)
            _write_id_maps(pid, linux)
            sync.send(parent_sock, sync.Sync.USERNS_MAPPED)
        unblocked = True  # from here on the intermediate needs nothing more from us
        cgroup = make_cgroup()
        # Read by the init only: the intermediate receives nothing after USERNS_MAPPED.
        sync.send(parent_sock, sync.Sync.CGROUP_MADE, cgroup.paths())
        meanwhile(cgroup)
        if not direct:
            init_pid = int(sync.expect(parent_sock, sync.Sync.INIT_PID))
        # The first move into a v1 cgroup waits for an RCU grace period (10-20 ms here): the
        # init builds its root filesystem meanwhile, and waits for this message before it
        # needs to be inside. The message also orders the socket: the init speaks only after
        # the intermediate's INIT_PID has been read.
        cgroup.add(init_pid)
        prime.done()
        sync.send(parent_sock, sync.Sync.CGROUP_JOINED)
        if not direct:
            os.waitpid(pid, 0)
        st.pid = init_pid
        st.pid_start = state.proc_start_time(init_pid) or 0
        kind, payload = sync.recv(parent_sock)
        if kind == sync.Sync.RUN_HOOKS:
            hooks.run_hooks(spec, "prestart", state.oci_state(opts.root, st, state.Status.CREATING))
            hooks.run_hooks(spec, "createRuntime", state.oci_state(opts.root, st, state.Status.CREATING))
            sync.send(parent_sock, sync.Sync.HOOKS_DONE)
            sync.expect(parent_sock, sync.Sync.READY)
        elif kind == sync.Sync.ERROR:
            cls = ERROR_BY_KIND.get(payload.get("kind", ""), Internal)
            raise cls(payload["message"])
        elif kind != sync.Sync.READY:
            raise Internal(f"container init sent {kind}, expected {sync.Sync.READY}")
        if "oomScoreAdj" in (spec.get("process") or {}):
            pass  # written by the init itself, while it still had the privilege
        st.status = state.Status.CREATED
        state.save(opts.root, st)
        spec_hooks = spec.get("hooks") or {}
        if not (spec_hooks.get("poststart") or spec_hooks.get("poststop")):
            # The installed command's start and delete then need no Python (skiff-lowlevel).
            state.save_shell_state(opts.root, st, list(dict.fromkeys(cgroup.paths().values())))
        return init_pid
    except BaseException as failure:
        # A child that failed early has said why and gone; what we then hit (a reset socket, a
        # pid that left) only hides its reason, which is still queued on the socket.
        told = sync.queued_error(parent_sock) if isinstance(failure, (OSError, SkiffError)) else None
        if init_pid == 0:
            if unblocked:
                # The parent's share failed while the intermediate forks the init, which it
                # does without waiting for us: learn the init's pid, so that it goes too.
                init_pid = sync.next_init_pid(parent_sock)
            try:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        else:
            st.pid = init_pid
        if init_pid:
            try:
                os.kill(init_pid, 9)
            except ProcessLookupError:
                pass
            state.wait_gone(init_pid, None)
        if told is not None and told is not failure:
            raise told from None
        raise
    finally:
        parent_sock.close()


def _write_id_maps(pid: int, linux: dict[str, Any]) -> None:
    for kind, key in (("uid", "uidMappings"), ("gid", "gidMappings")):
        lines = "".join(f"{m['containerID']} {m['hostID']} {m['size']}\n" for m in linux.get(key) or [])
        if not lines:
            raise InvalidArgument(f"config.json: a new user namespace needs linux.{key}")
        path = f"/proc/{pid}/{kind}_map"
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, lines.encode())
        except OSError as e:
            raise InvalidArgument(f"write {path}: {os.strerror(e.errno or 0)} ({lines.strip()!r})") from None
        finally:
            os.close(fd)


def _intermediate(
    sock: socket.socket,
    spec: dict[str, Any],
    st: state.ContainerState,
    fifo: str,
    opts: CreateOptions,
    console: socket.socket | None,
    new_user: bool,
) -> None:
    # The debug records name the steps as runc's do (its tests look for them).
    log.debug("nsexec container setup")
    linux = spec.get("linux") or {}
    namespaces = linux.get("namespaces") or []
    _join_namespaces(namespaces)
    if new_user:
        sc.unshare(sc.CLONE_NEWUSER)
        sync.send(sock, sync.Sync.USERNS_CREATED)
        sync.expect(sock, sync.Sync.USERNS_MAPPED)
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)
    flags = _new_namespace_flags(namespaces)
    if flags:
        sc.unshare(flags)
    pid = os.fork()
    if pid != 0:
        sync.send(sock, sync.Sync.INIT_PID, pid)
        return
    sync.child_main(sock, lambda: _init(sock, spec, st, fifo, opts, console, new_user))


def _join_namespaces(namespaces: list[dict[str, Any]]) -> None:
    """setns into every namespace given by path: the user namespace first, the mount one last."""
    # Open every namespace to join first: paths may stop resolving once we switch namespaces.
    joins: list[tuple[int, int, str]] = []
    for ns in namespaces:
        if ns.get("path"):
            try:
                fd = os.open(ns["path"], os.O_RDONLY | os.O_CLOEXEC)
            except OSError as e:
                raise InvalidArgument(f"open namespace {ns['type']} {ns['path']}: {e.strerror}") from None
            joins.append((fd, sc.NAMESPACE_FLAGS[ns["type"]], ns["path"]))
    joins.sort(key=lambda j: (j[1] != sc.CLONE_NEWUSER, j[1] == sc.CLONE_NEWNS))
    for fd, flag, path in joins:
        sc.setns(fd, flag, path)
        os.close(fd)


def _new_namespace_flags(namespaces: list[dict[str, Any]]) -> int:
    """The namespaces to unshare (not user: made first, apart; not cgroup: made by the init once
    it is in its cgroup, which becomes its root)."""
    flags = 0
    for ns in namespaces:
        if not ns.get("path") and ns["type"] not in ("user", "cgroup"):
            flags |= sc.NAMESPACE_FLAGS[ns["type"]]
    return flags


# Hooks the parent runs itself (a fork each): they must not start in the container's pid namespace.
_PARENT_HOOKS = ("prestart", "createRuntime", "poststart", "poststop")


def _init_forked_directly(spec: dict[str, Any], namespaces: list[dict[str, Any]]) -> bool:
    """Whether the parent can fork the init itself, without an intermediate process.

    The intermediate exists for what must happen between two forks: a new user namespace (the
    parent writes its maps), a pid or time namespace (new or joined: they apply to children
    only) in a user namespace. Without those, the parent unshares the pid namespace for its
    children and forks the init, which joins (network, ipc, uts, mount, cgroup namespaces given
    by path: a container of the engine joins the network namespace the daemon made) and
    unshares the rest itself: one fork of a Python process (~1 ms here) fewer on the way. The
    parent's own later forks would land in the container's pid namespace, so a spec with hooks
    the parent runs keeps the intermediate.
    """
    if any(ns["type"] in ("user", "time") or (ns.get("path") and ns["type"] == "pid") for ns in namespaces):
        return False
    hooks_ = spec.get("hooks") or {}
    return not any(hooks_.get(phase) for phase in _PARENT_HOOKS)


def _direct_init(
    sock: socket.socket,
    spec: dict[str, Any],
    st: state.ContainerState,
    fifo: str,
    opts: CreateOptions,
    console: socket.socket | None,
    net_fd: int = -1,
) -> None:
    """The init forked by the parent (see _init_forked_directly): the parent made the pid
    namespace, and the network namespace too when ``net_fd`` is one (see _NetnsMaker)."""
    log.debug("nsexec container setup")
    namespaces = (spec.get("linux") or {}).get("namespaces") or []
    _join_namespaces(namespaces)
    flags = _new_namespace_flags(namespaces) & ~sc.CLONE_NEWPID
    if net_fd >= 0:
        sc.setns(net_fd, sc.CLONE_NEWNET, "network namespace made by the runtime")
        os.close(net_fd)
        flags &= ~sc.CLONE_NEWNET
    if flags:
        sc.unshare(flags)
    _init(sock, spec, st, fifo, opts, console, False)


class _NetnsMaker:
    """A new network namespace, made by a thread of the parent while it prepares the rest.

    It is the slowest namespace to make (unshare: ~0.6 ms more than mount, uts or ipc here), and
    the init used to make it on the critical path. Namespaces belong to threads: this one's new
    namespace is kept as an fd, which the init joins with setns (owned, as it would have been,
    by the host's user namespace: the direct path has no user namespace of its own).
    """

    def __init__(self) -> None:
        self._fd = -1
        self._done = _thread.allocate_lock()
        self._done.acquire()
        self._waited = False
        _thread.start_new_thread(self._make, ())

    def _make(self) -> None:
        try:
            sc.unshare(sc.CLONE_NEWNET)
            self._fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except BaseException:  # noqa: BLE001 - the init then unshares it itself, as before
            self._fd = -1
        finally:
            self._done.release()

    def result(self) -> int:
        """The namespace's fd (-1 if the thread failed): waits for the thread."""
        if not self._waited:
            self._done.acquire()
            self._waited = True
        return self._fd

    def close(self) -> None:
        fd = self.result()
        self._fd = -1
        if fd >= 0:
            os.close(fd)


def _init(
    sock: socket.socket,
    spec: dict[str, Any],
    st: state.ContainerState,
    fifo: str,
    opts: CreateOptions,
    console: socket.socket | None,
    in_userns: bool,
) -> None:
    """PID 1 of the container: filesystem, identity, then wait on the exec fifo and execve."""
    log.debug("child process in init()")
    linux = spec.get("linux") or {}
    process = spec.get("process") or {}
    os.setsid()
    ns_types = {ns["type"] for ns in linux.get("namespaces") or []}
    # The exec fifo's folder, kept open: the fifo is opened through it once the init waits,
    # after pivot_root or chroot, with or without a /proc in the container.
    fifo_dir_fd = os.open(os.path.dirname(fifo), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    preload_modules(process, linux.get("seccomp"), spec.get("hooks"))
    cgroup_paths = _CgroupPaths(sock)
    if "mount" in ns_types:
        # Waits for the cgroup folders only when it comes to mount them.
        mounts.setup_rootfs(spec, st.rootfs, st.bundle, cgroup_paths, in_userns=in_userns)
    cgroup_paths()  # the message is read in any case, before the next one
    spec_hooks = spec.get("hooks") or {}
    # Hooks before pivot_root see the container in its cgroup. Without them, the init builds its
    # whole filesystem while the parent's first cgroup move waits out an RCU grace period.
    early_hooks = any(spec_hooks.get(k) for k in ("prestart", "createRuntime", "createContainer"))
    if early_hooks:
        _join_cgroup(sock, linux)
        sync.send(sock, sync.Sync.RUN_HOOKS)
        sync.expect(sock, sync.Sync.HOOKS_DONE)
        if spec_hooks.get("createContainer"):
            # runc runs them from the root filesystem, before pivot_root: "./lib" is the rootfs's.
            os.chdir(st.rootfs)
        hooks.run_hooks(spec, "createContainer", state.oci_state(opts.root, st, state.Status.CREATING))
    # While /proc/self/fd can still be read: the rootfs may have no /proc.
    mark_fds_cloexec(3 + opts.preserve_fds)
    if "mount" in ns_types:
        mounts.enter_rootfs(st.rootfs, no_pivot=opts.no_pivot)
    else:
        os.chroot(st.rootfs)
        os.chdir("/")
    if console is not None:
        from services.lowlevel.console import setup_console

        setup_console(console, process.get("consoleSize"))
    if "uts" in ns_types:
        if spec.get("hostname"):
            sc.sethostname(spec["hostname"])
        if spec.get("domainname"):
            sc.setdomainname(spec["domainname"])
    if linux.get("sysctl"):
        # runc's order: sysctls while /proc/sys is still writable, then readonlyPaths takes that away.
        mounts.apply_sysctl(linux["sysctl"])
    if "mount" in ns_types:
        mounts.mask_paths(linux.get("maskedPaths") or [])
        mounts.readonly_paths(linux.get("readonlyPaths") or [])
        mounts.remount_read_only_later(spec)
    if (spec.get("root") or {}).get("readonly") and "mount" in ns_types:
        # As runc: without a mount namespace of its own the root is left as it is (a remount
        # would be the caller's, and the rootfs folder is no mount point to remount anyway).
        mounts.readonly_root()
    set_oom_score_adj(process.get("oomScoreAdj"))
    if not early_hooks:
        _join_cgroup(sock, linux)  # before the capabilities go: a cgroup namespace needs them
    seccomp = linux.get("seccomp")
    path, env = prepare_identity(process, seccomp)
    log.debug("init: closing the pipe to signal completion")
    sync.send(sock, sync.Sync.READY)
    sock.close()
    # Blocks until ``start`` opens the other end.
    wfd = os.open(state.EXEC_FIFO, os.O_WRONLY | os.O_CLOEXEC, dir_fd=fifo_dir_fd)
    # ``start`` has opened the other end. The fifo goes now, before the byte that lets start
    # return, so "created" (the fifo's presence) is over when start is; the installed command's
    # shell start then needs no ``rm`` (a process less). Where the init may not (the root of a user
    # namespace owns nothing in the state folder), the starter removes it, as it did before.
    try:
        os.unlink(state.EXEC_FIFO, dir_fd=fifo_dir_fd)
    except OSError:
        pass
    os.write(wfd, b"0")
    os.close(wfd)
    os.close(fifo_dir_fd)
    hooks.run_hooks(spec, "startContainer", state.oci_state(opts.root, st, state.Status.CREATED))
    exec_process(process, path, env, seccomp)


class _CgroupPaths:
    """The cgroup folders of each hierarchy, as the parent sends them once it made them."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.paths: dict[str, str] | None = None

    def __call__(self) -> dict[str, str]:
        if self.paths is None:
            self.paths = sync.expect(self.sock, sync.Sync.CGROUP_MADE)
        return self.paths


def _join_cgroup(sock: socket.socket, linux: dict[str, Any]) -> None:
    """Wait until the parent has moved us into the cgroup; then the cgroup namespace, rooted there."""
    sync.expect(sock, sync.Sync.CGROUP_JOINED)
    if any(ns["type"] == "cgroup" and not ns.get("path") for ns in linux.get("namespaces") or []):
        sc.unshare(sc.CLONE_NEWCGROUP)
