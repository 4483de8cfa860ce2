"""Seccomp: turn the OCI ``linux.seccomp`` object into a filter and load it, through libseccomp.

The runtime calls :func:`validate_seccomp` in ``create`` before it forks (bad input fails early,
with nothing made) and :func:`load_seccomp` in the container's init process as late as it can:

- with ``noNewPrivileges``: after ``set_no_new_privs()``, right before ``execve``;
- without it: before the capabilities are dropped, because loading a filter without
  ``NO_NEW_PRIVS`` needs ``CAP_SYS_ADMIN`` (runc's order, standard_init_linux.go).

libseccomp is opened only here, when a config is present: most containers of a plain ``run``
pay nothing for it. Its calls return ``-errno`` rather than setting ``errno``.
"""

from __future__ import annotations

import errno

from services.common.errors import InvalidArgument, SyscallError
from services.lowlevel.libc import CDLL, Structure, c_char_p, c_int, c_uint, c_uint32, c_uint64, c_void_p

# Actions that take no errno. SCMP_ACT_KILL is KILL_THREAD in libseccomp (and in runc).
_ACTIONS: dict[str, int] = {
    "SCMP_ACT_KILL": 0x00000000,
    "SCMP_ACT_KILL_THREAD": 0x00000000,
    "SCMP_ACT_KILL_PROCESS": 0x80000000,
    "SCMP_ACT_TRAP": 0x00030000,
    "SCMP_ACT_LOG": 0x7FFC0000,
    "SCMP_ACT_ALLOW": 0x7FFF0000,
}
# Actions whose low 16 bits carry errnoRet (SCMP_ACT_ERRNO(x), SCMP_ACT_TRACE(x)).
_ACT_ERRNO = 0x00050000
_ACT_TRACE = 0x7FF00000
_ERRNO_ACTIONS: dict[str, int] = {"SCMP_ACT_ERRNO": _ACT_ERRNO, "SCMP_ACT_TRACE": _ACT_TRACE}

_OPS: dict[str, int] = {
    "SCMP_CMP_NE": 1,
    "SCMP_CMP_LT": 2,
    "SCMP_CMP_LE": 3,
    "SCMP_CMP_EQ": 4,
    "SCMP_CMP_GE": 5,
    "SCMP_CMP_GT": 6,
    "SCMP_CMP_MASKED_EQ": 7,
}

# OCI name -> libseccomp's own name, which seccomp_arch_resolve_name turns into a token.
_ARCHES: dict[str, str] = {
    "SCMP_ARCH_X86": "x86",
    "SCMP_ARCH_X86_64": "x86_64",
    "SCMP_ARCH_X32": "x32",
    "SCMP_ARCH_ARM": "arm",
    "SCMP_ARCH_AARCH64": "aarch64",
    "SCMP_ARCH_MIPS": "mips",
    "SCMP_ARCH_MIPS64": "mips64",
    "SCMP_ARCH_MIPS64N32": "mips64n32",
    "SCMP_ARCH_MIPSEL": "mipsel",
    "SCMP_ARCH_MIPSEL64": "mipsel64",
    "SCMP_ARCH_MIPSEL64N32": "mipsel64n32",
    "SCMP_ARCH_PPC": "ppc",
    "SCMP_ARCH_PPC64": "ppc64",
    "SCMP_ARCH_PPC64LE": "ppc64le",
    "SCMP_ARCH_S390": "s390",
    "SCMP_ARCH_S390X": "s390x",
    "SCMP_ARCH_PARISC": "parisc",
    "SCMP_ARCH_PARISC64": "parisc64",
    "SCMP_ARCH_RISCV64": "riscv64",
}

# enum scmp_filter_attr values (seccomp.h, libseccomp 2.5).
_ATTR_CTL_NNP = 3
_ATTR_CTL_TSYNC = 4
_ATTR_CTL_LOG = 6
_ATTR_CTL_SSB = 7
_ATTR_API_SYSRAWRC = 9

_FLAGS: dict[str, int] = {
    "SECCOMP_FILTER_FLAG_TSYNC": _ATTR_CTL_TSYNC,
    "SECCOMP_FILTER_FLAG_LOG": _ATTR_CTL_LOG,
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW": _ATTR_CTL_SSB,
}

_MAX_ARGS = 6  # a syscall has at most six arguments
_NR_SCMP_ERROR = -1  # seccomp_syscall_resolve_name's "no such syscall"


class _ArgCmp(Structure):
    """struct scmp_arg_cmp: the argument index, the comparison and two 64-bit operands."""

    _fields_ = [
        ("arg", c_uint),
        ("op", c_int),
        ("datum_a", c_uint64),
        ("datum_b", c_uint64),
    ]


# A parsed rule: syscall names, action value, and argument conditions (index, op, a, b).
_Cond = tuple[int, int, int, int]
_Rule = tuple[list[str], int, list[_Cond]]


def validate_seccomp(config: dict) -> None:
    """Check a ``linux.seccomp`` object without loading anything (not even libseccomp)."""
    _parse(config)


def load_seccomp(config: dict) -> None:
    """Build the filter ``config`` describes and load it into the calling process.

    Unknown syscall names are skipped (the kernel or libseccomp may not know them: runc does the
    same). ``NO_NEW_PRIVS`` is left to the caller: the filter's own NNP attribute is turned off,
    so the process's ``noNewPrivileges`` setting stays the config's.
    """
    default_action, arches, flags, rules = _parse(config)
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
            _check(lib.seccomp_attr_set(ctx, _FLAGS[flag], 1), f"seccomp_attr_set {flag}")
        for arch in arches:
            token = lib.seccomp_arch_resolve_name(_ARCHES[arch].encode())
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


def _parse(config: object) -> tuple[int, list[str], list[str], list[_Rule]]:
    """Turn the config into numbers, or raise InvalidArgument naming the offending field."""
    if not isinstance(config, dict):
        raise InvalidArgument("seccomp: expected an object")
    default_errno = _errno_ret(config.get("defaultErrnoRet"), "seccomp.defaultErrnoRet")
    default_action = _action(config.get("defaultAction"), default_errno, "seccomp.defaultAction")

    arches = _string_list(config.get("architectures"), "seccomp.architectures")
    for arch in arches:
        if arch not in _ARCHES:
            raise InvalidArgument(f"seccomp.architectures: unknown architecture {arch!r}")

    flags = _string_list(config.get("flags"), "seccomp.flags")
    for flag in flags:
        if flag not in _FLAGS:
            raise InvalidArgument(f"seccomp.flags: flag {flag!r} is not supported")

    syscalls = config.get("syscalls")
    if syscalls is None:
        syscalls = []
    if not isinstance(syscalls, list):
        raise InvalidArgument("seccomp.syscalls: expected a list")
    rules: list[_Rule] = []
    for i, call in enumerate(syscalls):
        field = f"seccomp.syscalls[{i}]"
        if not isinstance(call, dict):
            raise InvalidArgument(f"{field}: expected an object")
        names = _string_list(call.get("names"), f"{field}.names")
        if not names:
            raise InvalidArgument(f"{field}.names: at least one syscall name is required")
        errno_ret = _errno_ret(call.get("errnoRet"), f"{field}.errnoRet")
        action = _action(call.get("action"), errno_ret, f"{field}.action")
        args = call.get("args")
        if args is None:
            args = []
        if not isinstance(args, list):
            raise InvalidArgument(f"{field}.args: expected a list")
        conds = [_condition(arg, f"{field}.args[{j}]") for j, arg in enumerate(args)]
        rules.append((names, action, conds))
    return default_action, arches, flags, rules


def _action(name: object, errno_ret: int | None, field: str) -> int:
    if name == "SCMP_ACT_NOTIFY":
        # Notify needs a listener fd handed to a seccomp agent (listenerPath): not implemented.
        raise InvalidArgument(f"{field}: SCMP_ACT_NOTIFY is not supported")
    if isinstance(name, str):
        if name in _ACTIONS:
            return _ACTIONS[name]
        if name in _ERRNO_ACTIONS:
            # runc's default for both ERRNO and TRACE is EPERM.
            return _ERRNO_ACTIONS[name] | (errno.EPERM if errno_ret is None else errno_ret)
    raise InvalidArgument(f"{field}: unknown action {name!r}")


def _errno_ret(value: object, field: str) -> int | None:
    if value is None:
        return None
    # The errno travels in the 16 low bits of the filter's return value.
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFFFF:
        raise InvalidArgument(f"{field}: expected an integer from 0 to 65535, got {value!r}")
    return value


def _condition(arg: object, field: str) -> _Cond:
    if not isinstance(arg, dict):
        raise InvalidArgument(f"{field}: expected an object")
    index = arg.get("index")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < _MAX_ARGS:
        raise InvalidArgument(f"{field}.index: expected 0 to {_MAX_ARGS - 1}, got {index!r}")
    op = _OPS.get(arg.get("op"))  # type: ignore[arg-type]
    if op is None:
        raise InvalidArgument(f"{field}.op: unknown operator {arg.get('op')!r}")
    values: list[int] = []
    for key in ("value", "valueTwo"):
        value = arg.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 64:
            raise InvalidArgument(f"{field}.{key}: expected an unsigned 64-bit integer, got {value!r}")
        values.append(value)
    return index, op, values[0], values[1]


def _string_list(value: object, field: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument(f"{field}: expected a list of strings")
    return value


def _add_rule(lib: CDLL, ctx: int, name: str, nr: int, action: int, conds: list[_Cond]) -> None:
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
