"""How many times the daemon's containers changed, in 8 bytes of shared memory (``<run>/daemon-list.gen``).

The apiserver keeps the container list it last got from the daemon (apiserver/list_lane.py) and
answers ``GET /containers/json`` from it while this counter stands still: reading it is a memory
load, where asking the daemon is a round trip through two event loops. The daemon adds one before
any change can be seen elsewhere (a record added, saved or dropped, a waiter woken), on its event
loop, so a client that saw a change through any answer finds the counter moved when it lists next.

The daemon holds an exclusive flock on the file for as long as it lives (the kernel drops it when
the process dies, SIGKILL included): the apiserver trusts the counter only while that lock is held,
so a list with the daemon down still fails as before instead of answering from what was kept.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import struct
from pathlib import Path

_COUNTER = struct.Struct("<Q")


def generation_path(daemon_socket: Path) -> Path:
    """Beside the daemon's gRPC socket."""
    return daemon_socket.with_name("daemon-list.gen")


class Generation:
    """The daemon's end: opened (made if missing, never replaced: an apiserver may have it mapped) and
    locked for the daemon's life; :meth:`bump` on the event loop at every change."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(self._fd).st_size < _COUNTER.size:
                os.ftruncate(self._fd, _COUNTER.size)
            self._map = mmap.mmap(self._fd, _COUNTER.size)
        except BaseException:
            os.close(self._fd)
            raise
        self._locked = False
        self.bump()  # what an apiserver kept from an earlier daemon goes

    @property
    def value(self) -> int:
        return int(_COUNTER.unpack_from(self._map)[0])

    def bump(self) -> None:
        if self._map.closed:  # the daemon stopping: no apiserver trusts the counter any more
            return
        if not self._locked:  # a predecessor still dying holds it: taken at a later change
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._locked = True
            except BlockingIOError:
                pass
        _COUNTER.pack_into(self._map, 0, (self.value + 1) & 0xFFFF_FFFF_FFFF_FFFF)

    def close(self) -> None:
        """At the daemon's stop: the lock goes, so apiservers stop trusting the counter."""
        with contextlib.suppress(Exception):
            self._map.close()
        with contextlib.suppress(OSError):
            os.close(self._fd)


class GenerationReader:
    """The apiserver's end: :meth:`read` gives the counter, or None when no live daemon holds the file
    (not made yet, the daemon down, or the file made anew: then it is opened again at the next read)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = -1
        self._map: mmap.mmap | None = None

    def read(self) -> int | None:
        if self._map is None and not self._open():
            return None
        assert self._map is not None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:  # the daemon holds it: the counter is live
            return int(_COUNTER.unpack_from(self._map)[0])
        except OSError:
            self.close()
            return None
        self.close()  # nobody holds it: no daemon, or one that made the file anew
        return None

    def _open(self) -> bool:
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return False
        try:
            self._map = mmap.mmap(fd, _COUNTER.size, prot=mmap.PROT_READ)
        except (OSError, ValueError):  # still being made (shorter than the counter)
            os.close(fd)
            return False
        self._fd = fd
        return True

    def close(self) -> None:
        if self._map is not None:
            with contextlib.suppress(Exception):
                self._map.close()
            self._map = None
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)  # also lets go of a shared lock taken by read
            self._fd = -1
