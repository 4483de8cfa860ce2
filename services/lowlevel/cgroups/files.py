"""The cgroup file system's small operations, shared by the v1 and v2 implementations: one
write(2) per value, reads that tell "absent" from "failed", tasks joined, listed, signalled,
folders removed once the kernel lets go of them. Only ``errno``, ``time`` and posix are imported:
every ``skiff-lowlevel`` launch pays for this module.
"""

from __future__ import annotations

import errno
import time

from services.common.errors import ErrorKind, InvalidArgument, SyscallError
from services.lowlevel import fastos as os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

CGROUP_ROOT = "/sys/fs/cgroup"

# How long destroy/freeze wait for the kernel to settle (exiting tasks, FREEZING) before failing.
SETTLE_SECONDS = 5.0
_POLL_FIRST = 0.0005
_POLL_MAX = 0.01


class CgroupBusy(SyscallError):
    """``rmdir`` still gives EBUSY after the deadline: tasks remain in the cgroup.

    A precondition failure rather than a fault: the caller should kill the tasks first.
    """

    kind = ErrorKind.FAILED_PRECONDITION


def write_file(path: str, value: str) -> None:
    """One write(2) of ``value``: cgroup files take one value per write, unbuffered."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as e:
        raise SyscallError(f"write {value} to", path, e.errno) from None
    try:
        os.write(fd, value.encode())
    except OSError as e:
        raise SyscallError(f"write {value} to", path, e.errno) from None
    finally:
        os.close(fd)


def read_file(path: str) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise SyscallError("read", path, e.errno) from None
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    except OSError as e:
        raise SyscallError("read", path, e.errno) from None
    finally:
        os.close(fd)
    return b"".join(chunks).decode()


def read_optional(path: str) -> str | None:
    """The file's text, or None when this kernel or controller does not provide it."""
    try:
        return read_file(path)
    except SyscallError as e:
        if e.errno in (errno.ENOENT, errno.ENOTSUP, errno.EOPNOTSUPP):
            return None
        raise


def read_uint(path: str, default: int = 0) -> int:
    """An integer file; "max" reads as 2**64-1 (Go's math.MaxUint64, as runc reports it)."""
    text = read_optional(path)
    if text is None:
        return default
    text = text.strip()
    if text == "max":
        return 2**64 - 1
    return int(text) if text else default


def read_keyed(path: str) -> dict[str, int]:
    """A flat "key value" file (memory.stat, cpu.stat, cgroup.events...)."""
    out: dict[str, int] = {}
    text = read_optional(path)
    if text is None:
        return out
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if value.strip().lstrip("-").isdigit():
            out[key] = int(value)
    return out


def add_pid(folder: str, pid: int) -> None:
    """Write the pid to cgroup.procs; EINVAL may mean the task is still TASK_NEW, so retry briefly."""
    path = folder + "/cgroup.procs"
    deadline = time.monotonic() + 0.5
    while True:
        try:
            write_file(path, str(pid))
            return
        except SyscallError as e:
            if e.errno != errno.EINVAL or time.monotonic() > deadline:
                raise
        time.sleep(0.01)


def walk_pids(folder: str) -> list[int]:
    """Every pid in cgroup.procs of ``folder`` and its sub-folders; a missing folder has none."""
    pids: list[int] = []
    text = read_optional(folder + "/cgroup.procs")
    if text is None:
        return pids
    pids.extend(int(line) for line in text.split())
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return pids
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            pids.extend(walk_pids(entry.path))
    return pids


def signal_pids(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass  # exited between listing and signalling: the goal is met


def remove_tree(folder: str) -> None:
    """rmdir ``folder`` and its sub-folders, deepest first.

    A cgroup cannot be removed while the kernel still lists tasks, which lags a little behind
    their exit, so EBUSY is retried with a deadline and then raised as CgroupBusy.
    """
    try:
        os.rmdir(folder)  # the common case: no sub-folder, no task left; one call, no listing
        return
    except FileNotFoundError:
        return
    except OSError as e:
        if e.errno not in (errno.EBUSY, errno.ENOTEMPTY):  # sub-folders, or tasks still listed
            raise SyscallError("rmdir", folder, e.errno) from None
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            remove_tree(entry.path)
    deadline = time.monotonic() + SETTLE_SECONDS
    interval = _POLL_FIRST
    while True:
        try:
            os.rmdir(folder)
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EBUSY:
                raise SyscallError("rmdir", folder, e.errno) from None
            if time.monotonic() > deadline:
                raise CgroupBusy("rmdir", folder, e.errno) from None
        time.sleep(interval)
        interval = min(interval * 2, _POLL_MAX)


def wait_for(
    check: Callable[[], bool], seconds: float = SETTLE_SECONDS, retry: Callable[[], None] | None = None
) -> bool:
    """Poll ``check()`` until true or the deadline; ``retry()`` runs every few polls. No blind sleep."""
    deadline = time.monotonic() + seconds
    interval = _POLL_FIRST
    polls = 0
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
        interval = min(interval * 2, _POLL_MAX)
        polls += 1
        if retry is not None and polls % 10 == 0:
            retry()
    return True


def device_rule(rule: dict[str, Any]) -> str | None:
    """An OCI device rule as the kernel's "type major:minor access" ("*" for a missing/-1 number)."""
    kind = rule.get("type") or "a"
    if kind not in ("a", "b", "c"):
        raise InvalidArgument(f"invalid device rule type {kind!r}")
    major = rule.get("major")
    minor = rule.get("minor")
    # runc writes only the r, w and m of an access string (its device emulator keeps the three
    # permissions as a set), so "rwa" means "rw": a spec runc runs must run here too.
    access = "".join(c for c in "rwm" if c in (rule.get("access") or "rwm"))
    if not access:
        return None  # nothing the kernel knows: the rule changes nothing
    maj = "*" if major is None or major == -1 else str(int(major))
    mnr = "*" if minor is None or minor == -1 else str(int(minor))
    return f"{kind} {maj}:{mnr} {access}"


def parse_id_list(text: str) -> list[int]:
    """A kernel list such as "0-3,5" as [0, 1, 2, 3, 5] (for cpuset stats)."""
    out: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out
