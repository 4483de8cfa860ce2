"""The container's state file: small, written atomically, loaded by every command; and its
shell-state, what the installed command's shell start and delete read instead (save_shell_state).

Plain classes rather than dataclasses and enums: those imports cost several milliseconds on
every launch, and the runtime's whole budget is a few tens of them.
"""

from __future__ import annotations

import time

from services.common import jsonio as json
from services.common.errors import AlreadyExists, InvalidArgument, NotFound
from services.lowlevel import fastos as os

# typing costs milliseconds of import on every launch; annotations are strings here.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


STATE_FILE = "state.json"
CONFIG_FILE = "config.json"
EXEC_FIFO = "exec.fifo"
# What the installed command's shell fast path (skiff-lowlevel, the /bin/sh wrapper) reads to
# start or delete a container without Python: see save_shell_state.
SHELL_STATE = "shell-state"
SHELL_STATE_VERSION = "v1"
_ID_EXTRA = set("_+-.")


class Status:
    CREATING = "creating"
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"


class ContainerState:
    __slots__ = (
        "id",
        "bundle",
        "rootfs",
        "created",
        "pid",
        "pid_start",
        "status",
        "owner",
        "annotations",
        "cgroups_path",
        "no_pivot",
    )

    def __init__(
        self,
        id: str,
        bundle: str,
        rootfs: str,
        created: str,
        pid: int = 0,
        pid_start: int = 0,
        status: str = Status.CREATING,
        owner: str = "",
        annotations: dict[str, str] | None = None,
        cgroups_path: str = "",
        no_pivot: bool = False,
    ) -> None:
        self.id = id
        self.bundle = bundle
        self.rootfs = rootfs
        self.created = created
        self.pid = pid
        # The init's start time (field 22 of /proc/PID/stat) tells a reused pid from ours.
        self.pid_start = pid_start
        self.status = status
        self.owner = owner
        self.annotations = annotations or {}
        self.cgroups_path = cgroups_path
        self.no_pivot = no_pivot

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


def validate_id(container_id: str) -> None:
    if (
        not container_id
        or container_id in (".", "..")
        or not all(c.isalnum() or c in _ID_EXTRA for c in container_id)
        or not container_id.isascii()
    ):
        raise InvalidArgument(f"invalid container id format: {container_id!r}")


def container_dir(root: str, container_id: str) -> str:
    validate_id(container_id)
    return os.path.join(root, container_id)


def make_container_dir(root: str, container_id: str) -> str:
    path = container_dir(root, container_id)
    os.makedirs(root, mode=0o711, exist_ok=True)
    try:
        os.mkdir(path, 0o711)
    except FileExistsError:
        raise AlreadyExists(f"container with id exists: {container_id}") from None
    return path


def remove_container_dir(root: str, container_id: str) -> None:
    """The folder holds only flat files (state, config, fifo): no shutil needed."""
    path = container_dir(root, container_id)
    try:
        names = os.listdir(path)
    except FileNotFoundError:
        return
    for name in names:
        try:
            os.unlink(os.path.join(path, name))
        except FileNotFoundError:
            pass
    os.rmdir(path)


def save(root: str, state: ContainerState) -> None:
    # Not durable: the state lives under /run (tmpfs) and, as runc's, does not outlive a reboot;
    # the rename alone keeps readers from ever seeing half a file.
    from services.common.atomic import atomic_write  # start, delete and state write nothing

    path = os.path.join(container_dir(root, state.id), STATE_FILE)
    atomic_write(path, json.dumps(state.to_dict()).encode(), durable=False)


def save_shell_state(root: str, state: ContainerState, cgroup_dirs: list[str]) -> None:
    """The facts that never change after ``create``, as the installed command's shell reads them
    (``.``, one read, where ``read`` would take a system call a byte): the init's pid and start
    time, and the cgroup folders ``delete`` removes, each value single-quoted.

    Written only for a container the shell may handle alone, with no poststart or poststop hook
    to run: its presence says so. Containers without it (or with an unknown version) go to Python.
    The stored status needs no copy: this file is written once the container is created, and
    from then on the status follows from the init's pid and the exec fifo alone (current_status).
    Sourcing it trusts the state folder no more than Python does: its config.json's hooks run.
    """
    lines = [
        "# skiff-lowlevel's shell state (services/lowlevel/state.py): sourced by services/lowlevel/skiff-lowlevel",
        f"shell_state={SHELL_STATE_VERSION} init_pid={state.pid} init_started={state.pid_start}",
        "set -- " + " ".join(_sh_quote(d) for d in cgroup_dirs),
    ]
    from services.common.atomic import atomic_write

    path = os.path.join(container_dir(root, state.id), SHELL_STATE)
    atomic_write(path, ("\n".join(lines) + "\n").encode(), durable=False)


def _sh_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def hookless(root: str, container_id: str) -> bool:
    """No poststart or poststop hook to run: create said so by writing the shell-state."""
    return os.path.exists(os.path.join(container_dir(root, container_id), SHELL_STATE))


def load(root: str, container_id: str) -> ContainerState:
    path = os.path.join(container_dir(root, container_id), STATE_FILE)
    try:
        with open(path, "rb") as f:
            raw = json.loads(f.read().decode())  # ours: no BOM, no utf-8-sig codec import
    except FileNotFoundError:
        raise NotFound(f"container does not exist: {container_id}") from None
    return ContainerState(**raw)


def proc_start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat, or None when the process is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name may hold spaces and parentheses: split after the last ')'.
    fields = data[data.rindex(b")") + 2 :].split()
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def init_alive(state: ContainerState) -> bool:
    return state.pid > 0 and proc_start_time(state.pid) == state.pid_start


def current_status(root: str, state: ContainerState) -> str:
    """Derived each time, as runc does: the pid, the exec fifo and the freezer tell it."""
    if state.status == Status.CREATING:
        return Status.CREATING if state.pid == 0 or init_alive(state) else Status.STOPPED
    if not init_alive(state):
        return Status.STOPPED
    if os.path.exists(os.path.join(container_dir(root, state.id), EXEC_FIFO)):
        return Status.CREATED
    if state.status == Status.PAUSED:
        return Status.PAUSED
    return Status.RUNNING


def oci_state(root: str, state: ContainerState, status: str | None = None) -> dict[str, Any]:
    """The state object of the OCI runtime spec, as ``state`` prints and hooks read on stdin."""
    status = status or current_status(root, state)
    result: dict[str, Any] = {
        "ociVersion": "1.0.2-dev",
        "id": state.id,
        "pid": state.pid if status != Status.STOPPED else 0,
        "status": status,
        "bundle": state.bundle,
        "rootfs": state.rootfs,
        "created": state.created,
    }
    # runc's order: annotations (when there are any) before owner.
    if state.annotations:
        result["annotations"] = state.annotations
    result["owner"] = state.owner
    return result


def now_rfc3339() -> str:
    """UTC, as Go's time.RFC3339Nano formats it: the fraction's trailing zeros dropped."""
    ns = time.time_ns()
    fraction = f"{ns % 1_000_000_000:09d}".rstrip("0")
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 1_000_000_000))
    return seconds + (f".{fraction}" if fraction else "") + "Z"


def wait_gone(pid: int, start_time: int | None, timeout: float = 10.0) -> bool:
    """Poll until the process has exited (a zombie counts as gone), bounded by ``timeout``."""
    deadline = time.monotonic() + timeout
    delay = 0.0005
    while time.monotonic() < deadline:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        now = proc_start_time(pid)
        if now is None or (start_time is not None and now != start_time):
            return True
        time.sleep(delay)
        delay = min(delay * 2, 0.02)
    return False
