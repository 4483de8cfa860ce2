"""The shim's event loop parts: an epoll with a payload per fd, and the reaper woken by SIGCHLD.

SIGCHLD arrives through the signal wakeup fd, watched by the loop like any other fd, so reaping,
output and requests never race (containerd's shim does the same with its reaper and epoller).
"""

from __future__ import annotations

import _signal as signal
import os
import select

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class Poller:
    """epoll with a payload per fd: ``selectors`` pulls in ``collections`` and costs ~5 ms per launch."""

    READ = select.EPOLLIN
    WRITE = select.EPOLLOUT
    PRIORITY = select.EPOLLPRI | select.EPOLLERR  # kernfs files (cgroup v2 memory.events) wake with these

    __slots__ = ("epoll", "keys")

    def __init__(self) -> None:
        self.epoll = select.epoll()
        self.keys: dict[int, tuple[int, Any]] = {}

    def register(self, fd: int, events: int, data: Any) -> None:
        self.epoll.register(fd, events)
        self.keys[fd] = (events, data)

    def modify(self, fd: int, events: int, data: Any) -> None:
        self.epoll.modify(fd, events)
        self.keys[fd] = (events, data)

    def unregister(self, fd: int) -> None:
        del self.keys[fd]
        self.epoll.unregister(fd)

    def events(self, fd: int) -> int | None:
        key = self.keys.get(fd)
        return key[0] if key else None

    def select(self, timeout: float | None) -> list[tuple[int, Any, int]]:
        ready = []
        for fd, happened in self.epoll.poll(-1 if timeout is None else timeout):
            key = self.keys.get(fd)
            if key is None:
                continue
            if happened & (select.EPOLLHUP | select.EPOLLERR):
                # A hang-up is seen as readiness for whatever was asked: the read or write says why.
                happened |= key[0]
            ready.append((fd, key[1], happened & key[0]))
        return ready


class Reaper:
    """Collects every child's exit status (the container's processes, re-parented to the subreaper
    shim, and the runtime's commands) into ``statuses``, by pid, when SIGCHLD wakes the loop."""

    __slots__ = ("wake_r", "wake_w", "statuses")

    def __init__(self, poller: Poller) -> None:
        self.statuses: dict[int, int] = {}
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self.wake_w)
        # A Python handler is needed for the wakeup fd to fire; reaping happens in the loop.
        signal.signal(signal.SIGCHLD, lambda _s, _f: None)
        signal.signal(signal.SIGTERM, lambda _s, _f: None)
        poller.register(self.wake_r, Poller.READ, ("wake", None))

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.statuses[pid] = status

    def drain(self) -> None:
        """Empties the wakeup pipe (the signals it tells of are handled by the caller)."""
        try:
            while os.read(self.wake_r, 512):
                pass
        except BlockingIOError:
            pass

    def wait(self, timeout: float) -> None:
        """Sleeps until a signal arrives or ``timeout`` passes (reaping is the caller's next step)."""
        select.select([self.wake_r], [], [], timeout)
        self.drain()
