"""start, kill, delete, pause and resume of an existing container."""

from __future__ import annotations

import _signal as signal

from services.common import jsonio as json
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound, SkiffError
from services.lowlevel import fastos as os
from services.lowlevel import hooks, state

# typing costs milliseconds of import on every launch; annotations are strings here.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from services.lowlevel.cgroups import Cgroup


START_TIMEOUT = 10.0


def load_spec_of(root: str, container_id: str) -> dict[str, Any]:
    with open(os.path.join(state.container_dir(root, container_id), state.CONFIG_FILE), "rb") as f:
        return json.loads(f.read().decode())  # written by us: no BOM, no utf-8-sig codec import


def cgroup_of(st: state.ContainerState) -> Cgroup:
    from services.lowlevel.cgroups import open_cgroup  # start does not need it

    return open_cgroup(st.cgroups_path or None, st.id)


def start(
    root: str, container_id: str, st: state.ContainerState | None = None, spec: dict[str, Any] | None = None
) -> state.ContainerState:
    """``st`` and ``spec``, when the caller has them (``run``), save reading them again."""
    st = st or state.load(root, container_id)
    status = state.current_status(root, st)
    if status == state.Status.STOPPED:
        raise FailedPrecondition("cannot start a container that has stopped")
    if status != state.Status.CREATED:
        raise FailedPrecondition(f"cannot start an already {status} container")
    release_init(root, container_id)
    # The stored status stays "created": from here on the status follows from the init and the
    # exec fifo (state.current_status), and the installed command's shell start (skiff-lowlevel)
    # cannot rewrite the file either, so both leave the same state behind.
    st.status = state.Status.RUNNING
    if spec is None:
        # Reading and parsing config.json only to find no hook: skipped when create said so.
        spec = {} if state.hookless(root, container_id) else load_spec_of(root, container_id)
    try:
        hooks.run_hooks(spec, "poststart", state.oci_state(root, st, state.Status.RUNNING))
    except SkiffError:
        # As runc: a failing poststart hook stops the container it was meant to follow.
        kill(root, container_id, signal.SIGKILL, all_processes=True)
        raise
    return st


def release_init(root: str, container_id: str) -> None:
    """The start itself: the init's byte read from the exec fifo (it execs the process then), and the
    fifo gone. The shim calls it alone for a container it created with no poststart hook, whose
    status it knows: the least code run in the shim, whose pages are shared with its zygote."""
    fifo = os.path.join(state.container_dir(root, container_id), state.EXEC_FIFO)
    if _read_exec_fifo(fifo) != b"0":
        raise FailedPrecondition("cannot start container: its init process is gone")
    try:
        os.unlink(fifo)
    except FileNotFoundError:
        pass  # the init removed it, as it does unless a user namespace keeps it from doing so


class _FifoTimeout(Exception):
    pass


def _fifo_timeout(signum: int, frame: object) -> None:
    raise _FifoTimeout


def _read_exec_fifo(fifo: str) -> bytes:
    """The init's byte, or b"" when it is gone; bounded by START_TIMEOUT.

    Blocking open and read, cut off by SIGALRM (``select`` would cost an import a launch): the
    open waits for the init's open for writing (it may not be there yet right after create),
    the read for its byte, or end of file if it died meanwhile.
    """
    previous = signal.signal(signal.SIGALRM, _fifo_timeout)
    signal.alarm(int(START_TIMEOUT))
    try:
        fd = os.open(fifo, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return os.read(fd, 1)
        finally:
            os.close(fd)
    except _FifoTimeout:
        return b""
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL if previous is None else previous)


def parse_signal(value: str) -> int:
    text = value.upper()
    if text.isdigit():
        return int(text)
    if not text.startswith("SIG"):
        text = "SIG" + text
    number = getattr(signal, text, None)
    if not isinstance(number, int) or text.startswith("SIG_"):
        raise InvalidArgument(f"unknown signal {value!r}")
    return number


def kill(root: str, container_id: str, sig: int, *, all_processes: bool = False) -> None:
    st = state.load(root, container_id)
    status = state.current_status(root, st)
    if status == state.Status.STOPPED and not all_processes:
        raise FailedPrecondition("container not running")
    if all_processes:
        cgroup = cgroup_of(st)
        if status == state.Status.PAUSED:
            cgroup.kill_all(sig)
            cgroup.thaw()
        else:
            cgroup.kill_all(sig)
        return
    if st.pid <= 0:
        # A create cut short before the init's pid was recorded: kill(0) would signal our own group.
        raise FailedPrecondition("container not running")
    try:
        os.kill(st.pid, sig)
    except ProcessLookupError:
        raise FailedPrecondition("container not running") from None


def delete(
    root: str,
    container_id: str,
    *,
    force: bool,
    st: state.ContainerState | None = None,
    spec: dict[str, Any] | None = None,
    cgroup: Cgroup | None = None,
) -> None:
    """``st``, ``spec`` and ``cgroup``, when the caller has them (``run``), save reading them again."""
    if st is None:
        try:
            st = state.load(root, container_id)
        except NotFound:
            if force:
                return
            raise
    status = state.current_status(root, st)
    if status in (state.Status.RUNNING, state.Status.PAUSED) and not force:
        raise FailedPrecondition(f"cannot delete container {container_id} that is not stopped: {status}")
    cgroup = cgroup or cgroup_of(st)
    if status != state.Status.STOPPED:
        cgroup.kill_all(signal.SIGKILL)
        if status == state.Status.PAUSED:
            cgroup.thaw()
        # pid 0: a create cut short before the init's pid was recorded (state "creating"); kill(0)
        # would SIGKILL the caller's whole process group. Its cgroup, killed above, holds the rest.
        if st.pid > 0:
            try:
                os.kill(st.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            if not state.wait_gone(st.pid, st.pid_start):
                raise FailedPrecondition(f"container {container_id}: init {st.pid} did not exit after SIGKILL")
    _wait_cgroup_empty(cgroup)
    cgroup.destroy()
    if spec is None and state.hookless(root, container_id):
        spec = {}
    if spec is None:
        try:
            spec = load_spec_of(root, container_id)
        except FileNotFoundError:
            spec = {}  # a create cut short before config.json was copied: no hooks to run
    try:
        hooks.run_hooks(spec, "poststop", state.oci_state(root, st, state.Status.STOPPED))
    finally:
        state.remove_container_dir(root, container_id)


def _wait_cgroup_empty(cgroup: Cgroup) -> None:
    """Processes the init left behind (its pid namespace takes them when it dies) are killed too."""
    if cgroup.pids():
        cgroup.kill_all(signal.SIGKILL)


def pause(root: str, container_id: str) -> None:
    st = state.load(root, container_id)
    status = state.current_status(root, st)
    if status != state.Status.RUNNING:
        raise FailedPrecondition(f"container not running: {status}")
    cgroup_of(st).freeze()
    st.status = state.Status.PAUSED
    state.save(root, st)


def resume(root: str, container_id: str) -> None:
    st = state.load(root, container_id)
    status = state.current_status(root, st)
    if status != state.Status.PAUSED:
        raise FailedPrecondition(f"container not paused: {status}")
    cgroup_of(st).thaw()
    st.status = state.Status.RUNNING
    state.save(root, st)
