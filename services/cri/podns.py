"""A pod's namespaces held without a process: network, IPC and UTS, each pinned by a bind mount.

skiff-cri runs no pause image (SKIFF_SANDBOX_IMAGE is not used; pause.py holds the PID namespace
only, which needs a process): a namespace lives as long as a mount names it, so a pod's namespaces
are made on a dedicated short-lived thread (an unshare changes only the calling thread),
bind-mounted from ``/proc/thread-self/ns/<kind>`` onto files under ``<run>/cri/pods/<pod id>/ns/``,
and its containers join them by path in their OCI spec. The UTS
namespace gets the pod's hostname before it is pinned.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import os
import shutil
import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path

from services.common.errors import FailedPrecondition, SyscallError

CLONE_NEWNET = 0x40000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUTS = 0x04000000
MS_BIND = 4096
MNT_DETACH = 2
KINDS = {"net": CLONE_NEWNET, "ipc": CLONE_NEWIPC, "uts": CLONE_NEWUTS}
THREAD_TIMEOUT = 30.0

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]


def _check(rc: int, operation: str, path: str | None) -> None:
    if rc != 0:
        raise SyscallError(operation, path, ctypes.get_errno())


def _on_fresh_thread(fn: Callable[[], None], name: str) -> None:
    """``fn`` on a thread that ends right after: no pool thread is ever left inside a pod's namespace."""
    box: dict[str, BaseException] = {}

    def body() -> None:
        try:
            fn()
        except BaseException as exc:  # re-raised on the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=body, name=name, daemon=True)
    thread.start()
    thread.join(THREAD_TIMEOUT)
    if thread.is_alive():
        raise FailedPrecondition(f"{name}: namespace work did not finish within {THREAD_TIMEOUT:.0f}s")
    if "error" in box:
        raise box["error"]


def _loopback_up() -> None:
    ifreq = "16sh22x"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        flags = struct.unpack(ifreq, fcntl.ioctl(sock, 0x8913, struct.pack(ifreq, b"lo", 0)))[1]
        fcntl.ioctl(sock, 0x8914, struct.pack(ifreq, b"lo", flags | 1))


def pin(folder: Path, kinds: list[str], hostname: str) -> dict[str, str]:
    """New namespaces of ``kinds`` (net, ipc, uts) pinned under ``folder``; their paths by kind (blocking)."""
    folder.mkdir(parents=True, exist_ok=True)
    made: dict[str, str] = {}
    try:
        for kind in kinds:
            path = folder / kind
            os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444))
            made[kind] = str(path)

            def make(kind: str = kind, path: Path = path) -> None:
                _check(_libc.unshare(KINDS[kind]), "unshare", None)
                if kind == "uts" and hostname:
                    socket.sethostname(hostname)
                if kind == "net":
                    _loopback_up()
                source = f"/proc/thread-self/ns/{kind}"
                _check(_libc.mount(source.encode(), os.fsencode(path), None, MS_BIND, None),
                       f"mount `{source}` to", str(path))

            _on_fresh_thread(make, f"pod-ns:{kind}")
    except BaseException:
        release(folder)
        raise
    return made


def release(folder: Path) -> None:
    """Every pin under ``folder`` unmounted (detached: a process still inside keeps its namespace) and
    the folder removed; idempotent (blocking)."""
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if _libc.umount2(os.fsencode(path), MNT_DETACH) != 0:
            errno_ = ctypes.get_errno()
            if errno_ not in (22, 2):  # EINVAL: not mounted; ENOENT: gone
                raise SyscallError("umount2", str(path), errno_)
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(folder)


def connect_inside(netns: str, port: int) -> socket.socket:
    """A TCP connection to ``127.0.0.1:port`` made inside the pod's network namespace (blocking); the
    socket stays in the namespace it was made in, wherever it is used from."""
    box: dict[str, socket.socket] = {}
    _libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]

    def inside() -> None:
        fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _check(_libc.setns(fd, CLONE_NEWNET), "setns", netns)
        finally:
            os.close(fd)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.settimeout(10)
            sock.connect(("127.0.0.1", port))
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        box["sock"] = sock

    _on_fresh_thread(inside, f"pod-dial:{port}")
    return box["sock"]
