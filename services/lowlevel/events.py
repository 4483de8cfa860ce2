"""``events``: a running container's resource statistics and OOM kills, as runc prints them.

One JSON object a line (Go's compact encoding): ``{"type":"stats","id":...,"data":{...}}`` every
interval, ``{"type":"oom","id":...}`` when the kernel killed a process for memory, until the
container's init is gone; with ``--stats``, the statistics once.
"""

from __future__ import annotations

import time

from services.common.errors import FailedPrecondition
from services.lowlevel import fastos as os
from services.lowlevel import state
from services.lowlevel.output import go_json

# typing costs milliseconds of import on every launch; annotations are strings here.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# Go's time.ParseDuration units, in seconds.
_UNITS = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float | None:
    """A Go duration ("5s", "500ms", "1m30s") in seconds (a bare 0 is allowed, as in Go); None
    for anything else."""
    t = text.strip()
    if t == "0":
        return 0.0
    total, i = 0.0, 0
    while i < len(t):
        j = i
        while j < len(t) and (t[j].isdigit() or t[j] == "."):
            j += 1
        k = j
        while k < len(t) and not (t[k].isdigit() or t[k] == "."):
            k += 1
        number, unit = t[i:j], t[j:k]
        if not number or unit not in _UNITS:
            return None
        try:
            total += float(number) * _UNITS[unit]
        except ValueError:
            return None
        i = k
    return total if t else None


def _print(record: dict[str, Any]) -> None:
    print(go_json(record), flush=True)


def follow(root: str, container_id: str, *, interval: float, stats_once: bool) -> int:
    from services.lowlevel.lifecycle import cgroup_of

    st = state.load(root, container_id)
    if state.current_status(root, st) == state.Status.STOPPED:
        raise FailedPrecondition("container not running")
    cgroup = cgroup_of(st)
    if stats_once:
        _print({"type": "stats", "id": container_id, "data": cgroup.stats()})
        return 0
    notify = _oom_notifier(cgroup)
    ooms = cgroup.oom_kills()
    next_stats = time.monotonic() + interval
    try:
        # Bounded by the container's life: the loop ends when the init is gone.
        while state.init_alive(st):
            now_ooms = cgroup.oom_kills()
            if now_ooms > ooms:
                ooms = now_ooms
                _print({"type": "oom", "id": container_id})
            if time.monotonic() >= next_stats:
                _print({"type": "stats", "id": container_id, "data": cgroup.stats()})
                next_stats = time.monotonic() + interval
            if notify is None:
                time.sleep(0.05)
            else:
                # Woken at once by an OOM (the kernel's v1 notification), else a periodic check.
                import select

                if select.select([notify[0]], [], [], 0.05)[0]:
                    os.read(notify[0], 8)
        if cgroup.oom_kills() > ooms:
            _print({"type": "oom", "id": container_id})
    finally:
        if notify is not None:
            for fd in notify:
                os.close(fd)
    return 0


def _oom_notifier(cgroup: Any) -> tuple[int, int] | None:
    """cgroup v1's OOM notification (as runc): an eventfd registered on memory.oom_control.

    Returns (eventfd, oom_control fd), or None where it is not available (cgroup v2: polled).
    """
    memory = (cgroup.paths() if hasattr(cgroup, "paths") else {}).get("memory")
    if not memory or not os.path.exists(os.path.join(memory, "cgroup.event_control")):
        return None
    try:
        control = os.open(os.path.join(memory, "memory.oom_control"), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    efd = os.eventfd(0, os.EFD_CLOEXEC)
    try:
        with open(os.path.join(memory, "cgroup.event_control"), "w") as f:
            f.write(f"{efd} {control}")
    except OSError:
        os.close(efd)
        os.close(control)
        return None
    return efd, control
