"""The OOM watch on the container's memory cgroup, in the shim's loop (containerd's pkg/oom).

cgroup v1: an eventfd registered through ``cgroup.event_control`` on ``memory.oom_control``.
cgroup v2: ``memory.events`` itself, which kernfs wakes with EPOLLPRI whenever a counter moves.
A wake-up is confirmed by the ``oom_kill`` counter; v1 wakes before the OOM killer has picked its
victim, so after a wake-up without a new kill the counter is read again for a while.
"""

from __future__ import annotations

import os
import time

from services.shim.loop import Poller

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

# After a v1 wake-up without a new kill, the counter is read again this often, for this long.
OOM_RECHECK = 0.02
OOM_RECHECK_FOR = 2.0


class OomWatch:
    """Calls ``notify(count)`` once per new OOM kill in ``cgroup`` ("" when unknown: nothing watched)."""

    __slots__ = ("cgroup", "sel", "notify", "fd", "v2", "count", "recheck_until")

    def __init__(self, sel: Poller, notify: Callable[[int], None]) -> None:
        self.cgroup = ""
        self.sel = sel
        self.notify = notify
        self.fd = -1
        self.v2 = False
        self.count = 0  # the kills already told
        self.recheck_until = 0.0

    def kills(self) -> int:
        """The cgroup's ``oom_kill`` counter (v1 memory.oom_control, v2 memory.events); -1 if gone."""
        if not self.cgroup:
            return -1
        for name in ("memory.oom_control", "memory.events"):
            try:
                with open(os.path.join(self.cgroup, name), "rb") as f:
                    for line in f.read().splitlines():
                        key, _, value = line.partition(b" ")
                        if key == b"oom_kill":
                            return int(value)
            except OSError:
                continue
        return -1

    def arm(self, cgroup: str) -> None:
        """Arms the cgroup's OOM notification; a failure only costs the live event."""
        self.cgroup = cgroup
        if not cgroup:
            return
        self.count = max(self.kills(), 0)
        events_file = os.path.join(cgroup, "memory.events")
        if os.path.exists(events_file):
            try:
                self.fd = os.open(events_file, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return
            self.v2 = True
            self.sel.register(self.fd, Poller.PRIORITY, ("oom", None))
            return
        try:
            efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        except OSError:
            return
        try:
            control = os.open(os.path.join(cgroup, "memory.oom_control"), os.O_RDONLY | os.O_CLOEXEC)
            try:
                ctl = os.open(os.path.join(cgroup, "cgroup.event_control"), os.O_WRONLY | os.O_CLOEXEC)
                try:
                    os.write(ctl, f"{efd} {control}".encode())
                finally:
                    os.close(ctl)
            finally:
                # The kernel holds its own reference to the eventfd; the control file is not needed.
                os.close(control)
        except OSError:
            os.close(efd)
            return
        self.fd = efd
        self.sel.register(efd, Poller.READ, ("oom", None))

    def on_wake(self) -> None:
        if self.v2:
            # Re-arms the notification: kernfs wakes again only after the file was read.
            try:
                os.pread(self.fd, 4096, 0)
            except OSError:
                pass
        else:
            try:
                os.eventfd_read(self.fd)
            except OSError:
                pass
        if not self.check():
            if self.kills() < 0:
                self.stop()  # the cgroup was removed (v1 signals that too)
            else:
                self.recheck_until = time.monotonic() + OOM_RECHECK_FOR

    def stop(self) -> None:
        if self.fd >= 0:
            self.sel.unregister(self.fd)
            os.close(self.fd)
            self.fd = -1
        self.recheck_until = 0.0

    def check(self) -> bool:
        """Tells of every OOM kill since the last look; True if there was one."""
        if self.fd < 0:
            return False
        count = self.kills()
        if count <= self.count:
            return False
        self.count = count
        self.recheck_until = 0.0
        self.notify(count)
        return True

    def timeout(self, timeout: float | None) -> float | None:
        """The loop's next timeout, shortened while a v1 wake-up awaits its kill."""
        if not self.recheck_until:
            return timeout
        if time.monotonic() >= self.recheck_until:
            self.recheck_until = 0.0
            return timeout
        if self.check():
            return timeout
        return OOM_RECHECK if timeout is None else min(timeout, OOM_RECHECK)
