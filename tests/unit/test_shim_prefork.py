"""The zygote's fills before forking (services/shim/prefork.py): the free blocks they are meant to take."""

from __future__ import annotations

from services.shim.prefork import MallInfo2, fill_heap_holes, fill_pool_holes, small_object_stats, warm_type_cache


def test_small_object_stats_reads_every_size_class() -> None:
    stats = small_object_stats()
    sizes = [size for size, _ in stats]
    assert sizes == sorted(sizes) and sizes[0] == 16 and sizes[-1] == 512
    assert all(free >= 0 for _, free in stats)


def test_the_pool_fill_takes_the_free_blocks() -> None:
    # Holes of every size: objects kept and every other one dropped.
    kept = [bytes(n % 400) for n in range(20000)]
    del kept[::2]
    before = sum(free for _, free in small_object_stats())
    fillers = fill_pool_holes()
    after = sum(free for _, free in small_object_stats())
    assert len(fillers) > 0
    assert after < before / 2


def test_the_heap_fill_takes_mallocs_free_chunks() -> None:
    import ctypes

    mallinfo2 = ctypes.CDLL(None).mallinfo2
    mallinfo2.restype = MallInfo2

    def holes() -> int:
        info = mallinfo2()
        return info.fordblks - info.keepcost

    kept = [bytes(2000 + n) for n in range(400)]
    del kept[::2]
    before = holes()
    fillers = fill_heap_holes()
    assert fillers and holes() < before


def test_the_type_cache_warm_up_survives_attributes_that_raise() -> None:
    import sys
    import types

    class Raising(type):
        @property
        def broken(cls) -> int:
            raise RuntimeError("not at class level")

    module = types.ModuleType("prefork_test_fixture.module")
    module.Odd = Raising("Odd", (), {})  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    try:
        warm_type_cache(("prefork_test_fixture",))
    finally:
        del sys.modules[module.__name__]
