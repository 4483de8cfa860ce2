"""glibc's allocator, held to the memory a long-lived service needs (apiserver, daemon, highlevel).

skiff soak (issue 15) found the daemon's RSS still growing ~0.7 KB a launch after its Python objects
had stopped growing (a census of the idle services between equal runs of launches: object counts
flat, glibc's heap holding more and more *free* memory). glibc gives each thread that allocates
its own arena (up to 8 a core); the services' thread pools (``asyncio.to_thread``: JSON, file
writes, netlink) each left the free chunks of their peak in an arena the other threads never reuse,
and free memory in the middle of an arena is not given back. So:

- ``limit_arenas``: two arenas for the whole process (``M_ARENA_MAX``, as ``MALLOC_ARENA_MAX=2``
  does, the common setting for Python and JVM servers): the threads share their free chunks;
- ``trim_every``: ``malloc_trim(0)`` now and then returns the free pages inside the arenas too,
  not only at their top (in a thread: it walks the heap).

Neither changes what a service does; on a libc without them (musl) they do nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util

M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)
ARENAS = 2
TRIM_EVERY = 30.0  # seconds


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def limit_arenas(count: int = ARENAS) -> bool:
    """At most ``count`` malloc arenas from now on (call it before the thread pools start); False
    when this libc has no such setting."""
    libc = _libc()
    return bool(libc is not None and libc.mallopt(M_ARENA_MAX, count) == 1)


def trim() -> bool:
    """Free pages back to the kernel; True when some were."""
    libc = _libc()
    return bool(libc is not None and libc.malloc_trim(0))


async def trim_every(period: float = TRIM_EVERY) -> None:
    """For the life of the service (a task cancelled at its stop)."""
    while True:
        await asyncio.sleep(period)
        await asyncio.to_thread(trim)
