"""Seccomp: turn the OCI ``linux.seccomp`` object into a filter and load it, through libseccomp.

The config is checked in ``create`` before the runtime forks (bad input fails early, with nothing
made) by services/common/oci_seccomp.py, whose :func:`parse` gives the numbers used here;
:func:`load_seccomp` runs in the container's init process as late as it can:

- with ``noNewPrivileges``: after ``set_no_new_privs()``, right before ``execve``;
- without it: before the capabilities are dropped, because loading a filter without
  ``NO_NEW_PRIVS`` needs ``CAP_SYS_ADMIN`` (runc's order, standard_init_linux.go).

libseccomp is opened only here, when a config is present: most containers of a plain ``run``
pay nothing for it. Its calls return ``-errno`` rather than setting ``errno``.

Compiled programs are kept where ``SKIFF_SECCOMP_CACHE`` names a folder (highlevel gives its
shims one on its tmpfs): building Docker's default filter through libseccomp was 1.2 ms of every
container's init, for the same few profiles each time. :func:`preload` (in the runtime, before it
forks) then reads the program made for this exact profile, or builds it once, exports it
(``seccomp_export_bpf``) and keeps it; the init loads those bytes with ``seccomp(2)`` itself,
with the flags libseccomp would have passed. The key is the profile's JSON with libseccomp's
version, the kernel's release and the machine: anything that could change the program.
"""

from __future__ import annotations

import errno
import os

from services.common.errors import InvalidArgument, SyscallError
from services.common.oci_seccomp import ARCHES, FLAGS, Condition, parse
from services.lowlevel.libc import (
    CDLL,
    Structure,
    addressof,
    buffer_of,
    byref,
    c_char_p,
    c_int,
    c_uint,
    c_uint32,
    c_uint64,
    c_ulong,
    c_ushort,
    c_void_p,
    get_errno,
    libc,
)

CACHE_ENV = "SKIFF_SECCOMP_CACHE"
_SYS_SECCOMP = {"x86_64": 317, "aarch64": 277}.get(os.uname().machine, 0)
_SECCOMP_SET_MODE_FILTER = 1
# seccomp(2)'s flags for the OCI names; libseccomp passes the same for its TSYNC/LOG/SSB attributes.
_KERNEL_FLAGS = {
    "SECCOMP_FILTER_FLAG_TSYNC": 1,
    "SECCOMP_FILTER_FLAG_LOG": 2,
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW": 4,
}
_prepared: tuple[dict, bytes, int] | None = None  # (the config, its program, seccomp(2)'s flags)

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
    prepared = _prepared
    if prepared is not None and prepared[0] is config:
        _load_program(prepared[1], prepared[2])
        return
    lib = _libseccomp()
    ctx = _build(lib, config)
    try:
        _check(lib.seccomp_load(ctx), "seccomp_load")
    finally:
        lib.seccomp_release(ctx)


def _build(lib: CDLL, config: dict) -> int:
    """libseccomp's filter context for ``config`` (the caller releases it)."""
    default_action, arches, flags, rules = parse(config)
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
    except BaseException:
        lib.seccomp_release(ctx)
        raise
    return ctx


class _SockFprog(Structure):
    """struct sock_fprog: the program's length in instructions and a pointer to them."""

    _fields_ = [("len", c_ushort), ("filter", c_void_p)]


def _load_program(program: bytes, flags: int) -> None:
    """seccomp(SECCOMP_SET_MODE_FILTER, flags, program): what seccomp_load does with its export."""
    instructions = buffer_of(program)
    fprog = _SockFprog(len(program) // 8, addressof(instructions))
    if libc().syscall(c_ulong(_SYS_SECCOMP), c_ulong(_SECCOMP_SET_MODE_FILTER), c_ulong(flags), byref(fprog)) != 0:
        raise SyscallError("seccomp_load", None, get_errno())


def _export(config: dict) -> bytes:
    """The BPF program libseccomp makes of ``config``, as seccomp_load would load it."""
    lib = _libseccomp()
    ctx = _build(lib, config)
    fd = os.memfd_create("seccomp-bpf", os.MFD_CLOEXEC)
    try:
        _check(lib.seccomp_export_bpf(ctx, fd), "seccomp_export_bpf")
        size = os.lseek(fd, 0, os.SEEK_CUR)
        return os.pread(fd, size, 0)
    finally:
        os.close(fd)
        lib.seccomp_release(ctx)


def _cache_key(config: dict) -> str:
    # Imported here: only a runtime given a cache folder needs them (the shim's zygote has them
    # loaded already); the C module alone, hashlib's import would cost every launch.
    from services.common import jsonio as json

    try:
        from _sha256 import sha256
    except ImportError:  # pragma: no cover - Python 3.12 renamed it
        from hashlib import sha256
    lib = _libseccomp()
    version = _Version.from_address(lib.seccomp_version())
    uname = os.uname()
    ident = [config, [version.major, version.minor, version.micro], uname.release, uname.machine]
    return sha256(json.dumps(ident).encode()).hexdigest()  # another key order: only another file


class _Version(Structure):
    _fields_ = [("major", c_uint), ("minor", c_uint), ("micro", c_uint)]


def _prepare(config: dict, folder: str) -> None:
    """The program for ``config`` from the cache folder, else built and stored there."""
    global _prepared
    path = os.path.join(folder, _cache_key(config) + ".bpf")
    try:
        with open(path, "rb") as f:
            program = f.read()
    except FileNotFoundError:
        from services.common.atomic import atomic_write

        program = _export(config)
        os.makedirs(folder, mode=0o700, exist_ok=True)
        atomic_write(path, program, durable=False)
    if not program or len(program) % 8:
        raise SyscallError("seccomp cache", path, errno.EINVAL)
    flags = 0
    for flag in parse(config)[2]:
        flags |= _KERNEL_FLAGS[flag]
    _prepared = (config, program, flags)


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


def preload(config: dict | None = None) -> None:
    """Before pivot_root or setns, while the host's filesystem is in sight: the cached program for
    ``config`` when there is a cache folder (see the module's doc), else libseccomp opened."""
    prepared = _prepared
    if prepared is not None and prepared[0] is config:
        return
    folder = os.environ.get(CACHE_ENV)
    if config is not None and folder and _SYS_SECCOMP:
        _prepare(config, folder)
        return
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
    lib.seccomp_export_bpf.argtypes, lib.seccomp_export_bpf.restype = [ptr, c_int], c_int
    lib.seccomp_version.argtypes, lib.seccomp_version.restype = [], ptr
    _lib = lib
    return lib
