"""cgroupfs seen from a process: which cgroups it is in, and keeping the migration lock switched.

``/proc/<pid>/cgroup`` is read here only (the shim's memory cgroup and its move to the roots,
the runtime's and highlevel's own cgroup). The kernel's cgroup migration lock
(``cgroup_threadgroup_rwsem``, taken for writing by every write to a ``cgroup.procs``) makes its
first writer after a quiet spell wait out an RCU grace period (6-20 ms here), and stays in its
fast-write state for about one grace period after the last write: ``keep_switched`` writes a
process's pid into the cgroup it is already in (a no-op move) often enough to hold that state.
Used by skiff-lowlevel's prime (services/lowlevel/prime.py) and highlevel's warmer
(services/highlevel/cgroup_warm.py).

Imports only ``posix`` and ``time`` (loaded at interpreter start): the runtime imports it first
of all, and the shim on every launch.
"""

import posix
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

ROOT = "/sys/fs/cgroup"
# Well inside the lock's fast window (one grace period after the last write: 12-16 ms measured here).
KEEP_INTERVAL = 0.004


def memberships(pid: "int | str" = "self") -> "list[tuple[str, str, str]]":
    """``(hierarchy id, controllers, path)`` for each line of ``/proc/<pid>/cgroup``; OSError if unreadable."""
    fd = posix.open(f"/proc/{pid}/cgroup", posix.O_RDONLY | posix.O_CLOEXEC)
    try:
        text = posix.read(fd, 65536).decode()
    finally:
        posix.close(fd)
    found = []
    for line in text.split("\n"):
        parts = line.split(":", 2)
        if len(parts) == 3:
            found.append((parts[0], parts[1], parts[2]))
    return found


def unified_root() -> str:
    """Where the v2 hierarchy is mounted: /sys/fs/cgroup itself (pure v2) or its ``unified`` (hybrid)."""
    try:
        posix.stat(ROOT + "/cgroup.controllers")
        return ROOT
    except OSError:
        return ROOT + "/unified"


def own_procs_file() -> "str | None":
    """cgroup.procs of a cgroup this process is in: v1 pids (hybrid or legacy), else the v2 one."""
    unified = None
    for hierarchy, controllers, path in memberships():
        if "pids" in controllers.split(","):
            return f"{ROOT}/{controllers}{path.rstrip('/')}/cgroup.procs"
        if hierarchy == "0" and not controllers:
            unified = path.rstrip("/")
    if unified is None:
        return None
    return f"{unified_root()}{unified}/cgroup.procs"


def memory_cgroup(pid: int) -> str:
    """The folder of ``pid``'s memory cgroup (the v1 memory hierarchy, else its v2 cgroup); "" if unknown."""
    try:
        lines = memberships(pid)
    except OSError:
        return ""
    for _, controllers, path in lines:
        if "memory" in controllers.split(","):
            return f"{ROOT}/memory{path}"
    for hierarchy, controllers, path in lines:
        if hierarchy == "0" and not controllers:
            return unified_root() + path
    return ""


def hierarchies_away_from_root() -> "set[str]":
    """Names (as mounted under /sys/fs/cgroup) of the hierarchies where this process is not at the root.

    ``{"*"}`` when unknown: every hierarchy is then a candidate.
    """
    try:
        lines = memberships()
    except OSError:
        return {"*"}
    away: set[str] = set()
    for _, controllers, path in lines:
        if path == "/":
            continue
        if not controllers:
            away.update(("unified", ""))  # v2: /sys/fs/cgroup/unified on hybrid, /sys/fs/cgroup itself on v2
        else:
            away.add(controllers.removeprefix("name="))
            away.update(controllers.split(","))
    return away


def keep_switched(procs_file: str, pid: bytes, keep_going: "Callable[[], bool]") -> bool:
    """Writes ``pid`` into ``procs_file`` every KEEP_INTERVAL while ``keep_going()``.

    Returns False if the file could not be opened; a failed write just ends the loop (it is only
    ever an optimisation: at worst the real move waits as it would have).
    """
    try:
        fd = posix.open(procs_file, posix.O_WRONLY | posix.O_CLOEXEC)
    except OSError:
        return False
    try:
        while keep_going():
            posix.write(fd, pid)
            time.sleep(KEEP_INTERVAL)
    except OSError:
        pass
    finally:
        posix.close(fd)
    return True
