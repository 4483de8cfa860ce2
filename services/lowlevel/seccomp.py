"""Seccomp: turn the OCI ``linux.seccomp`` object into a filter and load it, through libseccomp.

The config is checked in ``create`` before the runtime forks (bad input fails early, with nothing
made) by services/common/oci_seccomp.py, whose :func:`parse` gives the numbers used here;
:func:`load_seccomp` runs in the container's init process as late as it can:

- with ``noNewPrivileges``: after ``set_no_new_privs()``, right before ``execve``;
- without it: before the capabilities are dropped, because loading a filter without
  ``NO_NEW_PRIVS`` needs ``CAP_SYS_ADMIN`` (runc's order, standard_init_linux.go).

libseccomp is opened only here, when a config is present: most containers of a plain ``run``
pay nothing for it. Its calls return ``-errno`` rather than setting ``errno``.
"""

from __future__ import annotations

import errno

from services.common.errors import InvalidArgument, SyscallError
from services.common.oci_seccomp import ARCHES, FLAGS, Condition, parse
from services.lowlevel.libc import CDLL, Structure, c_char_p, c_int, c_uint, c_uint32, c_uint64, c_void_p

_NR_SCMP_ERROR = -1  # seccomp_syscall_resolve_name's "no such syscall"
# enum scmp_filter_attr values (seccomp.h, libseccomp 2.5).
_ATTR_CTL_NNP = 3
_ATTR_API_SYSRAWRC = 9


class _ArgCmp(Structure):
    """struct scmp_arg_cmp: the argument index, the comparison and two 64-bit operands."""

    _fields_ = [
        ("arg", c_uint),
        ("op", c_int),
        ("datum_a", c_uint64),
        ("datum_b", c_uint64),
    ]



def load_seccomp(config: dict) -> None:
    """Build the filter ``config`` describes and load it into the calling process.

    Unknown syscall names are skipped (the kernel or libseccomp may not know them: runc does the
    same). ``NO_NEW_PRIVS`` is left to the caller: the filter's own NNP attribute is turned off,
    so the process's ``noNewPrivileges`` setting stays the config's.
    """
    default_action, arches, flags, rules = parse(config)
    lib = _libseccomp()
    ctx = lib.seccomp_init(default_action)
    if not ctx:
        raise SyscallError("seccomp_init", None, errno.ENOMEM)
    try:
        # Raw return codes make seccomp_load report the kernel's errno instead of ECANCELED;
        # an older libseccomp lacks the attribute, which only makes the errors vaguer.
        lib.seccomp_attr_set(ctx, _ATTR_API_SYSRAWRC, 1)
        _check(lib.seccomp_attr_set(ctx, _ATTR_CTL_NNP, 0), "seccomp_attr_set NO_NEW_PRIVS")
        for flag in flags:
            _check(lib.seccomp_attr_set(ctx, FLAGS[flag], 1), f"seccomp_attr_set {flag}")
        for arch in arches:
            token = lib.seccomp_arch_resolve_name(ARCHES[arch].encode())
            if token == 0:
                raise InvalidArgument(f"seccomp.architectures: {arch} is not supported by libseccomp")
            rc = lib.seccomp_arch_add(ctx, token)
            if rc != -errno.EEXIST:  # the native arch is in the filter from the start
                _check(rc, f"seccomp_arch_add {arch}")
        for names, action, conds in rules:
            if action == default_action:
                continue  # libseccomp refuses a rule that does what the default does
            for name in names:
                nr = lib.seccomp_syscall_resolve_name(name.encode())
                if nr == _NR_SCMP_ERROR:
                    continue
                _add_rule(lib, ctx, name, nr, action, conds)
        _check(lib.seccomp_load(ctx), "seccomp_load")
    finally:
        lib.seccomp_release(ctx)


def _add_rule(lib: CDLL, ctx: int, name: str, nr: int, action: int, conds: list[Condition]) -> None:
    # libseccomp takes one comparison per argument per rule. Like runc, when an argument is
    # compared more than once, each condition becomes a rule of its own (they are OR-ed).
    indexes = [c[0] for c in conds]
    groups = [[c] for c in conds] if len(set(indexes)) != len(indexes) else [conds]
    for group in groups:
        cmps = (_ArgCmp * len(group))()
        for slot, (index, op, a, b) in zip(cmps, group, strict=True):
            slot.arg, slot.op, slot.datum_a, slot.datum_b = index, op, a, b
        rc = lib.seccomp_rule_add_array(ctx, action, nr, len(group), cmps if group else None)
        _check(rc, f"seccomp_rule_add {name}")


def _check(rc: int, operation: str) -> None:
    if rc < 0:
        raise SyscallError(operation, None, -rc)


_lib: CDLL | None = None


def preload() -> None:
    """Open libseccomp now, while the host's filesystem is in sight (before pivot_root or setns)."""
    _libseccomp()


def _libseccomp() -> CDLL:
    """Open libseccomp and declare the prototypes used (an int result would truncate the pointer)."""
    global _lib
    if _lib is not None:
        return _lib
    try:
        lib = CDLL("libseccomp.so.2")
    except OSError as exc:
        raise SyscallError("dlopen libseccomp.so.2", None, errno.ENOENT) from exc
    ptr, u32 = c_void_p, c_uint32
    lib.seccomp_init.argtypes, lib.seccomp_init.restype = [u32], ptr
    lib.seccomp_release.argtypes, lib.seccomp_release.restype = [ptr], None
    lib.seccomp_load.argtypes, lib.seccomp_load.restype = [ptr], c_int
    lib.seccomp_attr_set.argtypes, lib.seccomp_attr_set.restype = [ptr, c_int, u32], c_int
    lib.seccomp_arch_resolve_name.argtypes, lib.seccomp_arch_resolve_name.restype = [c_char_p], u32
    lib.seccomp_arch_add.argtypes, lib.seccomp_arch_add.restype = [ptr, u32], c_int
    lib.seccomp_syscall_resolve_name.argtypes = [c_char_p]
    lib.seccomp_syscall_resolve_name.restype = c_int
    lib.seccomp_rule_add_array.argtypes = [ptr, u32, c_int, c_uint, c_void_p]
    lib.seccomp_rule_add_array.restype = c_int
    _lib = lib
    return lib
