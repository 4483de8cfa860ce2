"""Keeps the kernel's cgroup migration lock in its fast-write state while tasks are being created.

Every write to a ``cgroup.procs`` takes the global ``cgroup_threadgroup_rwsem`` for writing; the
first writer after a quiet spell waits out an RCU grace period (6-20 ms here) while the lock's
readers switch to their slow path, and the lock stays switched for about one grace period after
the last write. skiff-lowlevel's ``create`` primes it itself (services/lowlevel/prime.py), but run
from a shim it has no interpreter start-up to hide the wait behind: so highlevel starts the wait
the moment a task is asked for, in parallel with the shim's launch, by moving itself into its own
cgroup (a no-op move) every few ms until shortly after the last create. A container's snapshot
(``docker create``) starts it too: its task usually follows within milliseconds (``docker run``).
"""

from __future__ import annotations

import os
import threading
import time

from services.common.cgroupfs import keep_switched, own_procs_file

WARM_FOR = 0.25  # seconds after the last request: covers a shim's launch and its runtime's create


class CgroupLockWarmer:
    def __init__(self) -> None:
        self._until = 0.0
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        try:
            self._path = own_procs_file()
        except OSError:
            self._path = None

    def warm(self) -> None:
        if self._path is None:
            return
        with self._lock:
            self._until = time.monotonic() + WARM_FOR
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="cgroup-lock-warm", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        assert self._path is not None
        pid = str(os.getpid()).encode()
        if not keep_switched(self._path, pid, lambda: time.monotonic() < self._until):
            self._path = None


_warmer: CgroupLockWarmer | None = None


def warm() -> None:
    """The process-wide warmer: a task or a container's snapshot is on its way."""
    global _warmer
    if _warmer is None:
        _warmer = CgroupLockWarmer()
    _warmer.warm()
