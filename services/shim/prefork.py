"""What the shim zygote does once before it forks shims, so that each shim copies fewer of its pages.

A forked shim shares the zygote's memory until it writes to a page; then that page (4 KiB) is the
shim's own. Its own new objects are written somewhere: into the free blocks left between the
zygote's live ones (a write into a shared page, so a copy per page touched, for a few bytes), or
into fresh pages. Taking every such free block in the zygote first (the objects are kept for its
life, shared by all shims) sends a shim's allocations to fresh pages, packed together. Measured
with bench/highlevel.py (PSS per shim, 50 running): 2.56 -> 2.37 MiB for Python's small-object
pools, 2.40 -> 2.34 MiB more for malloc's heap.

Python 3.11's type attribute cache (4096 entries in the interpreter's state) keeps a reference to
each name it caches: a shim's first lookups of its classes' and the built-in types' attributes
would write an entry and a refcount on each name's page. Looked up once in the zygote, they are
hits in every shim (1.85 -> 1.77 MiB; the modules' attributes too evicted more than they saved).
"""

from __future__ import annotations

import _socket
import ctypes
import os
import select
import sys

# malloc's sizes tried, largest first, to take its free chunks (a chunk smaller than the last stays).
HEAP_FILL_SIZES = (65536, 16384, 4096, 1024, 600)
BYTES_OVERHEAD = 33  # sys.getsizeof(b""): a bytes object of length n takes n + 33 bytes


class MallInfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2`` (2.33+)."""

    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def small_object_stats() -> list[tuple[int, int]]:
    """(block size, free blocks in the pools in use) of each size class of Python's allocator,
    from ``sys._debugmallocstats`` (which prints on the C stderr: fd 2 is lent to a pipe)."""
    read_end, write_end = os.pipe()
    saved = os.dup(2)
    try:
        os.dup2(write_end, 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
    finally:
        os.close(saved)
        os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 65536):  # a few KiB: it fits the pipe before anyone reads
        chunks.append(chunk)
    os.close(read_end)
    stats = []
    for line in b"".join(chunks).decode(errors="replace").splitlines():
        fields = line.split()  # class, size, pools, blocks in use, available blocks
        if len(fields) == 5 and all(f.isdigit() for f in fields):
            stats.append((int(fields[1]), int(fields[4])))
    return stats


def fill_pool_holes() -> list[object]:
    """Objects of every size class, as many as its pools have free blocks."""
    fillers: list[object] = []
    for size, free in small_object_stats():
        if size <= 16:
            fillers.extend(object() for _ in range(free))  # 16 bytes
        elif size <= 32:
            fillers.extend((1 << 20) + n for n in range(free))  # a one-digit int: 28 bytes
        else:
            fillers.extend(bytes(size - BYTES_OVERHEAD) for _ in range(free))
    return fillers


def fill_heap_holes() -> list[object]:
    """Objects that take malloc's free chunks below the top of its heap (glibc only; else none)."""
    try:
        mallinfo2 = ctypes.CDLL(None).mallinfo2
    except AttributeError:
        return []
    mallinfo2.restype = MallInfo2

    def holes() -> int:
        info = mallinfo2()
        return info.fordblks - info.keepcost  # free bytes, less the top chunk's

    fillers: list[object] = []
    for size in HEAP_FILL_SIZES:
        while (before := holes()) >= size:
            fillers.append(bytes(size - BYTES_OVERHEAD))
            if holes() >= before:
                break  # served from the top: no hole of this size left
    return fillers


# The built-in types whose attributes the shim's loop, ops and log writes look up.
WARM_BUILTINS = (bytes, bytearray, dict, list, str, int, tuple, _socket.socket, select.epoll, type(os.environ))


def warm_type_cache(prefixes: tuple[str, ...]) -> None:
    """Looks up every attribute of the classes of the modules named by ``prefixes`` and of
    WARM_BUILTINS, so the type attribute cache holds them before the zygote forks."""
    types: set[type] = set(WARM_BUILTINS)
    for name, module in list(sys.modules.items()):
        if module is not None and name.startswith(prefixes):
            types.update(value for value in vars(module).values() if isinstance(value, type))
    for cls in types:
        for attribute in dir(cls):
            try:
                getattr(cls, attribute)
            except Exception:  # noqa: BLE001, S110 - a warm-up only: what a lookup raises changes nothing
                pass


def fill_holes() -> tuple[list[object], list[object]]:
    """Both fills (in two lists: joining them would free a chunk again); what is returned must be
    kept alive as long as the zygote forks."""
    pools = fill_pool_holes()
    return pools, fill_heap_holes()
