"""Thin wrappers (``_ctypes``, see libc.py) over the syscalls Python 3.11's os module lacks.

Each failure raises SyscallError with the operation, the path and the errno, as crun reports them.
"""

from __future__ import annotations

from services.common.errors import SyscallError
from services.lowlevel import fastos as os
from services.lowlevel.libc import c_char_p, c_int, c_ulong, get_errno, libc

_libc = libc()

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWTIME = 0x00000080

NAMESPACE_FLAGS = {
    "mount": CLONE_NEWNS,
    "cgroup": CLONE_NEWCGROUP,
    "uts": CLONE_NEWUTS,
    "ipc": CLONE_NEWIPC,
    "user": CLONE_NEWUSER,
    "pid": CLONE_NEWPID,
    "network": CLONE_NEWNET,
    "time": CLONE_NEWTIME,
}
# The file under /proc/PID/ns/ for each OCI namespace type.
NAMESPACE_FILES = {
    "mount": "mnt",
    "cgroup": "cgroup",
    "uts": "uts",
    "ipc": "ipc",
    "user": "user",
    "pid": "pid",
    "network": "net",
    "time": "time",
}

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_SYNCHRONOUS = 16
MS_REMOUNT = 32
MS_MANDLOCK = 64
MS_DIRSYNC = 128
MS_NOSYMFOLLOW = 256
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_SILENT = 32768
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MS_LAZYTIME = 1 << 25
MNT_DETACH = 2

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36

_mount = _libc.mount
_mount.argtypes = [c_char_p, c_char_p, c_char_p, c_ulong, c_char_p]
_umount2 = _libc.umount2
_umount2.argtypes = [c_char_p, c_int]
_prctl = _libc.prctl
_prctl.argtypes = [c_int, c_ulong, c_ulong, c_ulong, c_ulong]
_syscall = _libc.syscall

SYS_PIVOT_ROOT = 155  # x86_64


def _b(value: str | None) -> bytes | None:
    return value.encode() if value is not None else None


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    if _mount(_b(source), target.encode(), _b(fstype), flags, _b(data)) != 0:
        err = get_errno()
        what = f"mount `{source or fstype or ''}` to" if source or fstype else "remount"
        raise SyscallError(what, target, err)


def umount(target: str, flags: int = 0) -> None:
    if _umount2(target.encode(), flags) != 0:
        raise SyscallError("umount", target, get_errno())


def unshare(flags: int) -> None:
    if _libc.unshare(flags) != 0:
        raise SyscallError(f"unshare({flags:#x})", None, get_errno())


def setns(fd: int, nstype: int, path: str) -> None:
    if _libc.setns(fd, nstype) != 0:
        raise SyscallError("setns", path, get_errno())


def pivot_root(new_root: str, put_old: str) -> None:
    if _syscall(SYS_PIVOT_ROOT, new_root.encode(), put_old.encode()) != 0:
        raise SyscallError("pivot_root", new_root, get_errno())


def sethostname(name: str) -> None:
    raw = name.encode()
    if _libc.sethostname(raw, len(raw)) != 0:
        raise SyscallError("sethostname", name, get_errno())


def setdomainname(name: str) -> None:
    raw = name.encode()
    if _libc.setdomainname(raw, len(raw)) != 0:
        raise SyscallError("setdomainname", name, get_errno())


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    rc = _prctl(option, arg2, arg3, arg4, arg5)
    if rc < 0:
        raise SyscallError(f"prctl({option})", None, get_errno())
    return rc


def mknod(path: str, mode: int, device: int) -> None:
    try:
        os.mknod(path, mode, device)
    except OSError as e:
        raise SyscallError("mknod", path, e.errno or 0) from None
