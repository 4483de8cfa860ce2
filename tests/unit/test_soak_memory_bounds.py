"""What a long-lived service keeps per container stays bounded (issue 15: skiff soak's 30 minutes at
10 launches/s, RSS growth after the first minute): each structure found growing with the launches,
driven through many containers' worth of use, ends no larger than its bound."""

from __future__ import annotations

import os
from pathlib import Path

from services.common import atomic


def test_atomic_write_remembers_a_bounded_number_of_swept_folders(tmp_path: Path) -> None:
    """A folder per container (the daemon's records, highlevel's task folders): at a bound of 4,096
    the set of swept folders held ~1 MiB of paths and filled for 7 minutes of a 10/s soak."""
    atomic._SWEPT.clear()
    for n in range(atomic.SWEPT_MAX * 3):
        folder = tmp_path / f"c{n}"
        folder.mkdir()
        atomic.atomic_write(folder / "config.json", b"{}", durable=False)
    assert 0 < len(atomic._SWEPT) <= atomic.SWEPT_MAX
    assert atomic.SWEPT_MAX <= 256


def test_a_forgotten_folder_is_swept_again(tmp_path: Path) -> None:
    """Forgetting costs a second sweep, never a stale temporary left: a dead writer's ``.<name>.<pid>.tmp``
    in a folder dropped from the set goes at the next write there."""
    atomic._SWEPT.clear()
    first = tmp_path / "first"
    first.mkdir()
    atomic.atomic_write(first / "state", b"1", durable=False)
    for n in range(atomic.SWEPT_MAX):
        other = tmp_path / f"o{n}"
        other.mkdir()
        atomic.atomic_write(other / "state", b"x", durable=False)
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    stale = first / f".state.{dead}.tmp"
    stale.write_bytes(b"half")
    atomic.atomic_write(first / "state", b"2", durable=False)
    assert not stale.exists()
    assert (first / "state").read_bytes() == b"2"


def test_h2_remembers_few_closed_streams() -> None:
    """Each gRPC call is an HTTP/2 stream; h2 remembers the closed ones per connection (an OrderedDict):
    ~500 KiB a connection at 4,096, filling over a 10/s soak's first minutes; ~80 KiB at 1,024
    (tests/unit/test_grpc_streams.py checks the bound is kept)."""
    import tracemalloc

    from h2.stream import StreamClosedBy
    from h2.utilities import SizeLimitDict

    from services.common import grpc

    limit = grpc.H2Connection.MAX_CLOSED_STREAMS
    assert limit <= 1024
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        closed = SizeLimitDict(size_limit=limit)
        for stream_id in range(100_001, 100_001 + 8 * limit, 2):
            closed[stream_id] = StreamClosedBy.SEND_END_STREAM
        assert len(closed) == limit
        assert tracemalloc.get_traced_memory()[0] - before < 256 * 1024  # ~500 KiB at 4,096
    finally:
        tracemalloc.stop()
