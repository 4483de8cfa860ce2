"""The few syscalls Python 3.11's os module lacks (unshare, setns, mount, umount2), through ctypes."""

from __future__ import annotations

import ctypes
import ctypes.util
import os

from services.common.errors import SyscallError

CLONE_NEWNET = 0x40000000
MS_BIND = 4096
MNT_DETACH = 2

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]


def _check(rc: int, operation: str, path: str | None) -> None:
    if rc != 0:
        raise SyscallError(operation, path, ctypes.get_errno())


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare", None)


def setns(fd: int, nstype: int, path: str | None = None) -> None:
    _check(_libc.setns(fd, nstype), "setns", path)


def bind_mount(source: str, target: str) -> None:
    _check(_libc.mount(os.fsencode(source), os.fsencode(target), None, MS_BIND, None), f"mount `{source}` to", target)


def umount_detach(target: str) -> None:
    _check(_libc.umount2(os.fsencode(target), MNT_DETACH), "umount2", target)
