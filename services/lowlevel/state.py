"""The container's state file: small, written atomically, loaded by every command."""

from __future__ import annotations

import enum
import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from services.common.errors import AlreadyExists, InvalidArgument, NotFound

STATE_FILE = "state.json"
CONFIG_FILE = "config.json"
EXEC_FIFO = "exec.fifo"
_ID_RE = re.compile(r"^[\w+\-.]+$")


class Status(enum.Enum):
    CREATING = "creating"
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"


@dataclass(slots=True)
class ContainerState:
    id: str
    bundle: str
    rootfs: str
    created: str
    pid: int = 0
    # The init's start time (field 22 of /proc/PID/stat) tells a reused pid from ours.
    pid_start: int = 0
    status: str = Status.CREATING.value
    owner: str = ""
    annotations: dict[str, str] = field(default_factory=dict)
    cgroups_path: str = ""
    no_pivot: bool = False


def validate_id(container_id: str) -> None:
    if not container_id or not _ID_RE.match(container_id) or container_id in (".", ".."):
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


def save(root: str, state: ContainerState) -> None:
    directory = container_dir(root, state.id)
    tmp = os.path.join(directory, f".{STATE_FILE}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, json.dumps(asdict(state)).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, os.path.join(directory, STATE_FILE))


def load(root: str, container_id: str) -> ContainerState:
    path = os.path.join(container_dir(root, container_id), STATE_FILE)
    try:
        with open(path, "rb") as f:
            raw = json.loads(f.read())
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


def current_status(root: str, state: ContainerState) -> Status:
    """Derived each time, as runc does: the pid, the exec fifo and the freezer tell it."""
    if state.status == Status.CREATING.value:
        return Status.CREATING if state.pid == 0 or init_alive(state) else Status.STOPPED
    if not init_alive(state):
        return Status.STOPPED
    if os.path.exists(os.path.join(container_dir(root, state.id), EXEC_FIFO)):
        return Status.CREATED
    if state.status == Status.PAUSED.value:
        return Status.PAUSED
    return Status.RUNNING


def oci_state(root: str, state: ContainerState, status: Status | None = None) -> dict[str, Any]:
    """The state object of the OCI runtime spec, as ``state`` prints and hooks read on stdin."""
    status = status or current_status(root, state)
    return {
        "ociVersion": "1.0.2-dev",
        "id": state.id,
        "pid": state.pid if status not in (Status.STOPPED,) else 0,
        "status": status.value,
        "bundle": state.bundle,
        "rootfs": state.rootfs,
        "created": state.created,
        "owner": state.owner,
        **({"annotations": state.annotations} if state.annotations else {}),
    }


def now_rfc3339() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int((t % 1) * 1e9):09d}Z"
