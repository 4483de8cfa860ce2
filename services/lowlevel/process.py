"""The last steps before execve, shared by a container's init and by ``exec``.

The order mirrors runc: rlimits and oom score while still privileged, then (seccomp first when
no_new_privs is off) the bounding set, the uid/gid switch, the capability sets, the working
folder; the executable is looked up before the parent is told all went well.
"""

from __future__ import annotations

import errno
import sys

from services.common.errors import InvalidArgument, NotFound, SyscallError
from services.lowlevel import capabilities
from services.lowlevel import fastos as os

# typing costs milliseconds of import on every launch; annotations are strings here.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_RLIMITS = {
    "RLIMIT_CPU": 0,
    "RLIMIT_FSIZE": 1,
    "RLIMIT_DATA": 2,
    "RLIMIT_STACK": 3,
    "RLIMIT_CORE": 4,
    "RLIMIT_RSS": 5,
    "RLIMIT_NPROC": 6,
    "RLIMIT_NOFILE": 7,
    "RLIMIT_MEMLOCK": 8,
    "RLIMIT_AS": 9,
    "RLIMIT_LOCKS": 10,
    "RLIMIT_SIGPENDING": 11,
    "RLIMIT_MSGQUEUE": 12,
    "RLIMIT_NICE": 13,
    "RLIMIT_RTPRIO": 14,
    "RLIMIT_RTTIME": 15,
}


def preload_modules(process: dict[str, Any], seccomp: dict[str, Any] | None, spec_hooks: dict[str, Any] | None) -> None:
    """Import now what the last steps need: after pivot_root or setns the stdlib is out of sight.

    The kernel's last capability number is read now too: the rootfs may have no /proc."""
    if process.get("capabilities") is not None:
        capabilities.last_cap()
    if seccomp:
        from services.lowlevel.seccomp import preload

        preload(seccomp)  # the cached program, or libseccomp: after pivot_root the root may have neither
    if process.get("terminal"):
        import services.lowlevel.console  # noqa: F401
    if spec_hooks and spec_hooks.get("startContainer"):
        import subprocess  # noqa: F401


def validate_process(process: dict[str, Any]) -> None:
    for rl in process.get("rlimits") or []:
        if rl.get("type") not in _RLIMITS:
            raise InvalidArgument(f"config.json: unknown rlimit type {rl.get('type')!r}")
    if process.get("capabilities"):
        capabilities.validate_capabilities(process["capabilities"])


def env_dict(process: dict[str, Any]) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in process.get("env") or []:
        key, _, value = item.partition("=")
        env[key] = value
    return env


_RLIM_INFINITY = (1 << 64) - 1


def _rlim(value: object) -> int:
    """An OCI limit (uint64) as rlim_t; -1, as the resource module allows, is unlimited."""
    number = int(value)  # type: ignore[call-overload]
    if number == -1:
        return _RLIM_INFINITY
    if not 0 <= number <= _RLIM_INFINITY:
        raise ValueError(f"{number} is out of range")
    return number


def set_rlimits(process: dict[str, Any]) -> None:
    """setrlimit(2) through libc (the resource module is one more import a launch)."""
    rlimits = process.get("rlimits") or []
    if not rlimits:
        return
    from services.lowlevel.libc import get_errno, libc

    lib = libc()
    for rl in rlimits:
        try:
            soft, hard = _rlim(rl["soft"]), _rlim(rl["hard"])
        except (ValueError, TypeError) as e:
            raise InvalidArgument(f"setrlimit {rl['type']}: {e}") from None
        # struct rlimit: rlim_cur, rlim_max, two native 64-bit unsigned integers.
        limits = soft.to_bytes(8, sys.byteorder) + hard.to_bytes(8, sys.byteorder)
        if lib.setrlimit(_RLIMITS[rl["type"]], limits) != 0:
            raise InvalidArgument(f"setrlimit {rl['type']}: {os.strerror(get_errno())}")


def set_oom_score_adj(value: int | None) -> None:
    if value is None:
        return
    fd = os.open("/proc/self/oom_score_adj", os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, str(int(value)).encode())
    finally:
        os.close(fd)


def home_of(uid: int) -> str:
    """The user's home in the container's /etc/passwd, "/" if none. Bytes and plain system calls:
    a text file object costs the init ~0.3 ms here (mostly pages copied after the fork)."""
    try:
        fd = os.open("/etc/passwd", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return "/"
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    except OSError:
        return "/"
    finally:
        os.close(fd)
    wanted = str(uid).encode()
    for line in b"".join(chunks).split(b"\n"):
        fields = line.split(b":")
        if len(fields) >= 6 and fields[2] == wanted:
            return fields[5].decode("utf-8", "replace") or "/"
    return "/"


def lookup_executable(name: str, env: dict[str, str]) -> str:
    if "/" in name:
        candidates = [name]
    else:
        candidates = [os.path.join(d or ".", name) for d in env.get("PATH", DEFAULT_PATH).split(":")]
    for path in candidates:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    if "/" in name:
        raise NotFound(f'exec: "{name}": stat {name}: no such file or directory')
    raise NotFound(f'exec: "{name}": executable file not found in $PATH')


def prepare_identity(process: dict[str, Any], seccomp: dict[str, Any] | None) -> tuple[str, dict[str, str]]:
    """Everything that needs privilege: returns the executable path and the environment."""
    cwd = process.get("cwd") or "/"
    # As runc: the working folder is entered while still privileged, so a cwd that root can
    # reach but the user cannot works; a permission error is tried again as the user, for a
    # folder only the user may enter (root squashed on a network filesystem).
    cwd_pending = not _chdir(cwd, retry_as_user=True)
    set_rlimits(process)
    nnp = bool(process.get("noNewPrivileges"))
    if nnp:
        capabilities.set_no_new_privs()
    elif seccomp:
        # Without no_new_privs, loading a filter needs CAP_SYS_ADMIN: do it before dropping it.
        from services.lowlevel.seccomp import load_seccomp

        load_seccomp(seccomp)
    caps = process.get("capabilities")
    if caps is not None:
        capabilities.drop_bounding(caps)
    user = process.get("user") or {}
    uid, gid = int(user.get("uid", 0)), int(user.get("gid", 0))
    give_stdio_to(uid)
    capabilities.switch_user(uid, gid, [int(g) for g in user.get("additionalGids") or []])
    if cwd_pending:
        _chdir(cwd, retry_as_user=False)
    if caps is not None:
        capabilities.set_capabilities(caps)
    os.umask(int(user["umask"]) if user.get("umask") is not None else 0o022)
    env = env_dict(process)
    if "HOME" not in env:
        env["HOME"] = home_of(uid)
    return lookup_executable(process["args"][0], env), env


def give_stdio_to(uid: int) -> None:
    """As runc's fixStdioPermissions: stdio made outside the container (its pty above all) becomes
    the process user's, so that it can use its own terminal; the group stays (devpts' gid=5).
    /dev/null is left alone, and so is a descriptor the user namespace cannot chown."""
    null_rdev = -1
    for fd in (0, 1, 2):
        try:
            st = os.fstat(fd)
        except OSError:
            continue
        if st.st_uid == uid:
            continue
        if null_rdev == -1:
            try:
                null_rdev = os.stat("/dev/null").st_rdev
            except OSError:
                null_rdev = -2  # no /dev/null in this root: nothing is it
        if st.st_rdev == null_rdev:
            continue
        try:
            os.fchown(fd, uid, st.st_gid)
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.EPERM, errno.EROFS):
                raise SyscallError("fchown stdio", f"/proc/self/fd/{fd}", e.errno or 0) from None


def _chdir(cwd: str, *, retry_as_user: bool) -> bool:
    """chdir to ``cwd``; False when refused for permission and a later try is allowed."""
    try:
        os.chdir(cwd)
        return True
    except OSError as e:
        if retry_as_user and e.errno in (errno.EACCES, errno.EPERM):
            return False
        raise SyscallError("chdir to cwd", cwd, e.errno or 0) from None


def exec_process(process: dict[str, Any], path: str, env: dict[str, str], seccomp: dict[str, Any] | None) -> None:
    if seccomp and process.get("noNewPrivileges"):
        from services.lowlevel.seccomp import load_seccomp

        load_seccomp(seccomp)
    reset_signals()
    os.execve(path, process["args"], env)


def reset_signals() -> None:
    """Every signal at its default and none blocked, as runc and crun start a container's process.

    An ignored disposition survives execve: without this the process would inherit Python's own
    (SIGPIPE, SIGXFSZ) and whatever its launcher ignored, and `yes | head` would never end."""
    import _signal

    for number in range(1, _signal.NSIG):
        if number in (_signal.SIGKILL, _signal.SIGSTOP):
            continue
        try:
            _signal.signal(number, _signal.SIG_DFL)
        except (OSError, ValueError):
            pass  # the C library's own real-time signals
    _signal.pthread_sigmask(_signal.SIG_SETMASK, [])


def mark_fds_cloexec(keep_below: int) -> None:
    """No descriptor of the runtime's callers leaks into the container."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd >= keep_below:
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass
