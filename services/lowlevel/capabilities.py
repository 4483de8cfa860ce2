"""Capabilities, the user switch and NO_NEW_PRIVS for the container's init process.

The order follows runc (libcontainer/init_linux.go ``finalizeNamespace``), because each step
needs privileges that a later one takes away:

1. ``drop_bounding(caps)``: PR_CAPBSET_DROP needs CAP_SETPCAP, still held as root.
2. ``switch_user(uid, gid, gids)``: sets PR_SET_KEEPCAPS around the change, so the permitted set
   survives leaving uid 0 (the kernel clears it otherwise), then clears it again.
3. ``set_capabilities(caps)``: capset() for effective, permitted and inheritable, then the
   ambient set, which needs its caps in permitted and inheritable first.
4. ``set_no_new_privs()`` if ``process.noNewPrivileges``; then seccomp; then execve.

``apply_capabilities`` wraps steps 1 and 3 for callers that want one call per side of the switch.
Names in the table but above the kernel's ``cap_last_cap`` are ignored, as runc does, so one
config runs on older kernels; names not in the table are an error.
"""

from __future__ import annotations

import errno

from services.common.errors import InvalidArgument, SyscallError
from services.lowlevel import fastos as os
from services.lowlevel.libc import CDLL, Structure, byref, c_int, c_size_t, c_uint, c_uint32, c_ulong, get_errno, libc

CAPABILITIES: dict[str, int] = {
    "CAP_CHOWN": 0,
    "CAP_DAC_OVERRIDE": 1,
    "CAP_DAC_READ_SEARCH": 2,
    "CAP_FOWNER": 3,
    "CAP_FSETID": 4,
    "CAP_KILL": 5,
    "CAP_SETGID": 6,
    "CAP_SETUID": 7,
    "CAP_SETPCAP": 8,
    "CAP_LINUX_IMMUTABLE": 9,
    "CAP_NET_BIND_SERVICE": 10,
    "CAP_NET_BROADCAST": 11,
    "CAP_NET_ADMIN": 12,
    "CAP_NET_RAW": 13,
    "CAP_IPC_LOCK": 14,
    "CAP_IPC_OWNER": 15,
    "CAP_SYS_MODULE": 16,
    "CAP_SYS_RAWIO": 17,
    "CAP_SYS_CHROOT": 18,
    "CAP_SYS_PTRACE": 19,
    "CAP_SYS_PACCT": 20,
    "CAP_SYS_ADMIN": 21,
    "CAP_SYS_BOOT": 22,
    "CAP_SYS_NICE": 23,
    "CAP_SYS_RESOURCE": 24,
    "CAP_SYS_TIME": 25,
    "CAP_SYS_TTY_CONFIG": 26,
    "CAP_MKNOD": 27,
    "CAP_LEASE": 28,
    "CAP_AUDIT_WRITE": 29,
    "CAP_AUDIT_CONTROL": 30,
    "CAP_SETFCAP": 31,
    "CAP_MAC_OVERRIDE": 32,
    "CAP_MAC_ADMIN": 33,
    "CAP_SYSLOG": 34,
    "CAP_WAKE_ALARM": 35,
    "CAP_BLOCK_SUSPEND": 36,
    "CAP_AUDIT_READ": 37,
    "CAP_PERFMON": 38,
    "CAP_BPF": 39,
    "CAP_CHECKPOINT_RESTORE": 40,
}

CAP_SETS = ("bounding", "effective", "permitted", "inheritable", "ambient")

_PR_SET_KEEPCAPS = 8
_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_RAISE = 2
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _CapHeader(Structure):
    _fields_ = [("version", c_uint32), ("pid", c_int)]


class _CapData(Structure):
    _fields_ = [
        ("effective", c_uint32),
        ("permitted", c_uint32),
        ("inheritable", c_uint32),
    ]


def _libc() -> CDLL:
    # The already-loaded libc: a handle lookup, no file is opened.
    return libc()


_last_cap: int | None = None


def last_cap() -> int:
    """The highest capability number the running kernel knows, read once: the init reads it
    before it enters the rootfs, which may have no /proc (no mount namespace of its own)."""
    global _last_cap
    if _last_cap is not None:
        return _last_cap
    path = "/proc/sys/kernel/cap_last_cap"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _last_cap = int(os.read(fd, 32))
        finally:
            os.close(fd)
    except OSError as exc:
        raise SyscallError("read", path, exc.errno or errno.EIO) from exc
    return _last_cap


def validate_capabilities(caps: dict) -> None:
    """Check a ``process.capabilities`` object: every set a list of known capability names."""
    if not isinstance(caps, dict):
        raise InvalidArgument("capabilities: expected an object")
    for key in CAP_SETS:
        _names(caps, key)


def _names(caps: dict, key: str) -> list[str]:
    names = caps.get(key)
    if names is None:
        return []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise InvalidArgument(f"capabilities.{key}: expected a list of strings")
    for name in names:
        if name not in CAPABILITIES:
            raise InvalidArgument(f"capabilities.{key}: unknown capability {name!r}")
    return names


def _mask(caps: dict, key: str, last: int) -> int:
    """The set as a bit mask, leaving out capabilities the kernel does not have."""
    mask = 0
    for name in _names(caps, key):
        number = CAPABILITIES[name]
        if number <= last:
            mask |= 1 << number
    return mask


_prctl_ulong = None


def _prctl(lib: CDLL, option: int, arg2: int, arg3: int = 0) -> int:
    """prctl with every argument passed as unsigned long: PR_CAP_AMBIENT rejects junk in 4 and 5.

    One function object with argtypes converts the arguments in C (drop_bounding makes ~40 calls)."""
    global _prctl_ulong
    if _prctl_ulong is None:
        _prctl_ulong = lib.function("prctl", [c_int, c_ulong, c_ulong, c_ulong, c_ulong])
    rc = _prctl_ulong(option, arg2, arg3, 0, 0)
    return 0 if rc == 0 else get_errno()


def drop_bounding(caps: dict) -> None:
    """Drop from the bounding set every capability not in ``caps["bounding"]`` (all if absent)."""
    last = last_cap()
    keep = _mask(caps, "bounding", last)
    lib = _libc()
    for number in range(last + 1):
        if not keep & (1 << number):
            err = _prctl(lib, _PR_CAPBSET_DROP, number)
            if err:
                raise SyscallError(f"prctl PR_CAPBSET_DROP {number}", None, err)


def keep_caps(enable: bool) -> None:
    """PR_SET_KEEPCAPS: keep the permitted set across a change away from uid 0."""
    err = _prctl(_libc(), _PR_SET_KEEPCAPS, 1 if enable else 0)
    if err:
        raise SyscallError("prctl PR_SET_KEEPCAPS", None, err)


def set_capabilities(caps: dict) -> list[str]:
    """Set effective, permitted and inheritable (capset), then raise each ambient capability.

    Returns the ambient capabilities the kernel refused (EPERM: not in permitted and
    inheritable; EINVAL: unsupported). runc only warns about those, so the caller logs them.
    """
    last = last_cap()
    masks = {key: _mask(caps, key, last) for key in ("effective", "permitted", "inheritable")}
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    # Version 3 splits each 64-bit set over two structs: bits 0-31, then 32-63.
    data = (_CapData * 2)()
    for half in (0, 1):
        shift = 32 * half
        data[half].effective = (masks["effective"] >> shift) & 0xFFFFFFFF
        data[half].permitted = (masks["permitted"] >> shift) & 0xFFFFFFFF
        data[half].inheritable = (masks["inheritable"] >> shift) & 0xFFFFFFFF
    lib = _libc()
    if lib.capset(byref(header), data) != 0:
        raise SyscallError("capset", None, get_errno())

    err = _prctl(lib, _PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL)
    if err and err != errno.EINVAL:  # EINVAL: a kernel without ambient capabilities (< 4.3)
        raise SyscallError("prctl PR_CAP_AMBIENT_CLEAR_ALL", None, err)
    refused: list[str] = []
    for name in _names(caps, "ambient"):
        number = CAPABILITIES[name]
        if number > last:
            continue
        err = _prctl(lib, _PR_CAP_AMBIENT, _PR_CAP_AMBIENT_RAISE, number)
        if err in (errno.EPERM, errno.EINVAL):
            refused.append(name)
        elif err:
            raise SyscallError(f"prctl PR_CAP_AMBIENT_RAISE {name}", None, err)
    return refused


def apply_capabilities(caps: dict, *, keep_for_setuid: bool) -> list[str]:
    """One call per side of the user switch.

    ``keep_for_setuid=False`` (the user does not change): drop the bounding set and set every
    other set now; returns the refused ambient capabilities.
    ``keep_for_setuid=True``: only the part that must precede the switch: drop the bounding set
    and set PR_SET_KEEPCAPS; returns ``[]``. The caller then calls ``switch_user`` and
    ``set_capabilities``.
    """
    drop_bounding(caps)
    if keep_for_setuid:
        keep_caps(True)
        return []
    return set_capabilities(caps)


def switch_user(uid: int, gid: int, additional_gids: list[int]) -> None:
    """setgroups, setresgid, setresuid, in that order: each needs a capability the next loses.

    PR_SET_KEEPCAPS is on during the change so the permitted set survives (effective is cleared
    by the kernel and restored by ``set_capabilities``) and off afterwards, as in runc.
    """
    lib = _libc()
    keep_caps(True)
    try:
        gids = (c_uint * len(additional_gids))(*additional_gids)
        if lib.setgroups(c_size_t(len(additional_gids)), gids) != 0:
            err = get_errno()
            # In a user namespace with /proc/self/setgroups "deny" the call is refused; runc
            # skips it there, which is harmless when no groups were asked for.
            if not (err == errno.EPERM and not additional_gids and _setgroups_denied()):
                raise SyscallError(f"setgroups {additional_gids}", None, err)
        if lib.setresgid(*[c_uint(gid)] * 3) != 0:
            raise SyscallError(f"setresgid {gid}", None, get_errno())
        if lib.setresuid(*[c_uint(uid)] * 3) != 0:
            raise SyscallError(f"setresuid {uid}", None, get_errno())
    finally:
        keep_caps(False)


def _setgroups_denied() -> bool:
    try:
        fd = os.open("/proc/self/setgroups", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return os.read(fd, 16).strip() == b"deny"
    finally:
        os.close(fd)


def set_no_new_privs() -> None:
    """PR_SET_NO_NEW_PRIVS: execve can no longer grant privileges (setuid bits, file caps)."""
    err = _prctl(_libc(), _PR_SET_NO_NEW_PRIVS, 1)
    if err:
        raise SyscallError("prctl PR_SET_NO_NEW_PRIVS", None, err)
