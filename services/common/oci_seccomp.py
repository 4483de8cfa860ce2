"""The OCI ``linux.seccomp`` object: its schema, checked and turned into libseccomp's numbers.

Pure: nothing is loaded, not even libseccomp. The daemon validates a container's profile with it
at create, without importing the runtime's ctypes wrappers; skiff-lowlevel checks the config in
``create`` before it forks and its seccomp.py builds the filter from what :func:`parse` returns.
"""

from __future__ import annotations

import errno

from services.common.errors import InvalidArgument

# Actions that take no errno. SCMP_ACT_KILL is KILL_THREAD in libseccomp (and in runc).
ACTIONS: dict[str, int] = {
    "SCMP_ACT_KILL": 0x00000000,
    "SCMP_ACT_KILL_THREAD": 0x00000000,
    "SCMP_ACT_KILL_PROCESS": 0x80000000,
    "SCMP_ACT_TRAP": 0x00030000,
    "SCMP_ACT_LOG": 0x7FFC0000,
    "SCMP_ACT_ALLOW": 0x7FFF0000,
}
# Actions whose low 16 bits carry errnoRet (SCMP_ACT_ERRNO(x), SCMP_ACT_TRACE(x)).
ACT_ERRNO = 0x00050000
ACT_TRACE = 0x7FF00000
ERRNO_ACTIONS: dict[str, int] = {"SCMP_ACT_ERRNO": ACT_ERRNO, "SCMP_ACT_TRACE": ACT_TRACE}

OPS: dict[str, int] = {
    "SCMP_CMP_NE": 1,
    "SCMP_CMP_LT": 2,
    "SCMP_CMP_LE": 3,
    "SCMP_CMP_EQ": 4,
    "SCMP_CMP_GE": 5,
    "SCMP_CMP_GT": 6,
    "SCMP_CMP_MASKED_EQ": 7,
}

# OCI name -> libseccomp's own name, which seccomp_arch_resolve_name turns into a token.
ARCHES: dict[str, str] = {
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

# OCI flag -> the libseccomp filter attribute that sets it (enum scmp_filter_attr, seccomp.h 2.5).
FLAGS: dict[str, int] = {
    "SECCOMP_FILTER_FLAG_TSYNC": 4,  # SCMP_FLTATR_CTL_TSYNC
    "SECCOMP_FILTER_FLAG_LOG": 6,  # SCMP_FLTATR_CTL_LOG
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW": 7,  # SCMP_FLTATR_CTL_SSB
}

MAX_ARGS = 6  # a syscall has at most six arguments

# A parsed rule: syscall names, action value, and argument conditions (index, op, a, b).
Condition = tuple[int, int, int, int]
Rule = tuple[list[str], int, list[Condition]]


def validate_seccomp(config: object) -> None:
    """Check a ``linux.seccomp`` object without loading anything (not even libseccomp)."""
    parse(config)


def parse(config: object) -> tuple[int, list[str], list[str], list[Rule]]:
    """Turn the config into numbers, or raise InvalidArgument naming the offending field."""
    if not isinstance(config, dict):
        raise InvalidArgument("seccomp: expected an object")
    default_errno = _errno_ret(config.get("defaultErrnoRet"), "seccomp.defaultErrnoRet")
    default_action = _action(config.get("defaultAction"), default_errno, "seccomp.defaultAction")

    arches = _string_list(config.get("architectures"), "seccomp.architectures")
    for arch in arches:
        if arch not in ARCHES:
            raise InvalidArgument(f"seccomp.architectures: unknown architecture {arch!r}")

    flags = _string_list(config.get("flags"), "seccomp.flags")
    for flag in flags:
        if flag not in FLAGS:
            raise InvalidArgument(f"seccomp.flags: flag {flag!r} is not supported")

    syscalls = config.get("syscalls")
    if syscalls is None:
        syscalls = []
    if not isinstance(syscalls, list):
        raise InvalidArgument("seccomp.syscalls: expected a list")
    rules: list[Rule] = []
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
        if name in ACTIONS:
            return ACTIONS[name]
        if name in ERRNO_ACTIONS:
            # runc's default for both ERRNO and TRACE is EPERM.
            return ERRNO_ACTIONS[name] | (errno.EPERM if errno_ret is None else errno_ret)
    raise InvalidArgument(f"{field}: unknown action {name!r}")


def _errno_ret(value: object, field: str) -> int | None:
    if value is None:
        return None
    # The errno travels in the 16 low bits of the filter's return value.
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFFFF:
        raise InvalidArgument(f"{field}: expected an integer from 0 to 65535, got {value!r}")
    return value


def _condition(arg: object, field: str) -> Condition:
    if not isinstance(arg, dict):
        raise InvalidArgument(f"{field}: expected an object")
    index = arg.get("index")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < MAX_ARGS:
        raise InvalidArgument(f"{field}.index: expected 0 to {MAX_ARGS - 1}, got {index!r}")
    op = OPS.get(arg.get("op"))  # type: ignore[arg-type]
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
