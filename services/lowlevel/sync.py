"""The messages between a runtime command and the processes it forks (create's parent,
intermediate and init; exec's intermediate and process): a SEQPACKET socket pair carrying
JSON ``[kind, payload]``, the kinds named in ``Sync``. A child's failure crosses as an ERROR
message with its ErrorKind, so the parent raises the same typed error.
"""

from __future__ import annotations

import _socket as socket

from services.common import jsonio as json
from services.common.errors import ERROR_BY_KIND, ErrorKind, Internal, SkiffError
from services.lowlevel import fastos as os

# typing costs milliseconds of import on every launch; annotations are strings here.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


READY_TIMEOUT = 60.0


class Sync:
    """Messages between parent, intermediate and init (string constants: no enum import cost)."""

    USERNS_CREATED = "userns-created"  # intermediate → parent: write my uid/gid maps
    USERNS_MAPPED = "userns-mapped"  # parent → intermediate
    GO = "go"  # parent → exec's intermediate: you are in the cgroup, go on
    CGROUP_MADE = "cgroup-made"  # parent → init: the cgroup folders exist (their paths)
    INIT_PID = "init-pid"  # intermediate → parent: the init's host pid
    CGROUP_JOINED = "cgroup-joined"  # parent → init: you are in the cgroup; speak only after this
    RUN_HOOKS = "run-hooks"  # init → parent: run the createRuntime hooks now
    HOOKS_DONE = "hooks-done"  # parent → init
    READY = "ready"  # init → parent: waiting on the exec fifo
    ERROR = "error"  # any → parent: {"kind": an ErrorKind value, "message": ...}


def send(sock: socket.socket, kind: str, payload: Any = None) -> None:
    sock.send(json.dumps([kind, payload]).encode())


def recv(sock: socket.socket, timeout: float = READY_TIMEOUT) -> tuple[str, Any]:
    sock.settimeout(timeout)
    try:
        raw = sock.recv(65536)
    except TimeoutError:
        raise Internal("container init did not answer in time") from None
    if not raw:
        raise Internal("container init exited before it was ready")
    kind, payload = json.loads(raw.decode())  # str: no utf-8-sig codec import
    return kind, payload


def expect(sock: socket.socket, wanted: str) -> Any:
    kind, payload = recv(sock)
    if kind == Sync.ERROR:
        cls = ERROR_BY_KIND.get(payload.get("kind", ""), Internal)
        raise cls(payload["message"])
    if kind != wanted:
        raise Internal(f"container init sent {kind}, expected {wanted}")
    return payload


def queued_error(sock: socket.socket) -> SkiffError | None:
    """The ERROR a child left on the socket before it exited, if any (no waiting)."""
    sock.settimeout(0.0)
    try:
        while True:
            raw = sock.recv(65536)
            if not raw:
                return None
            kind, payload = json.loads(raw.decode())
            if kind == Sync.ERROR:
                return ERROR_BY_KIND.get(payload.get("kind", ""), Internal)(payload["message"])
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def next_init_pid(sock: socket.socket) -> int:
    """The intermediate's INIT_PID (bounded wait), or 0 when it failed or died instead."""
    try:
        kind, payload = recv(sock, timeout=5.0)
        return int(payload) if kind == Sync.INIT_PID else 0
    except (SkiffError, OSError, ValueError, TypeError):
        return 0


def child_main(sock: socket.socket, body: Any) -> None:
    """Run ``body`` in a forked child; any failure becomes an ERROR message, never a traceback."""
    code = 1
    try:
        body()
        code = 0
    except SkiffError as e:
        try_send_error(sock, e.kind, e.message)
    except OSError as e:
        try_send_error(sock, ErrorKind.INTERNAL, f"{e.strerror or e}: {e.filename or ''}".rstrip(": "))
    except BaseException as e:  # noqa: BLE001 - a forked child must never return into the caller
        try_send_error(sock, ErrorKind.INTERNAL, f"{type(e).__name__}: {e}")
    finally:
        os._exit(code)


def try_send_error(sock: socket.socket, kind: str, message: str) -> None:
    try:
        send(sock, Sync.ERROR, {"kind": kind, "message": message})
    except OSError:
        # The parent is gone (the init failed after READY, between ``start`` and execve): the
        # container's stderr is the only place left where the reason can be seen.
        try:
            os.write(2, f"skiff-lowlevel: container init: {message}\n".encode())
        except OSError:
            pass
