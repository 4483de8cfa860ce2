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


# The arenas glibc's malloc has made so far, as malloc_info lists them (one <heap> each).
_HEAPS = """
def heaps():
    libc = ctypes.CDLL("libc.so.6")
    libc.fopen.restype = ctypes.c_void_p
    path = tempfile.mktemp()
    fp = libc.fopen(path.encode(), b"w")
    libc.malloc_info(0, ctypes.c_void_p(fp))
    libc.fclose(ctypes.c_void_p(fp))
    with open(path) as f:
        count = f.read().count("<heap nr=")
    os.unlink(path)
    return count
"""

_ARENAS = """
import ctypes, os, sys, tempfile, threading
sys.path.insert(0, {repo!r})
from services.common import malloc
if {limit}:
    assert malloc.limit_arenas()
together = threading.Barrier(8)  # all alive at once: a finished thread's arena is handed on
def work():
    together.wait()
    kept = [bytearray(700) for _ in range(2000)]
    together.wait()
    del kept[::2]
threads = [threading.Thread(target=work) for _ in range(8)]
go = [t.start() for t in threads]
done = [t.join() for t in threads]
{heaps}
print(heaps())
assert malloc.trim() in (True, False)
"""


def test_services_keep_two_malloc_arenas_whatever_their_threads() -> None:
    """glibc gives each allocating thread an arena of its own (up to 8 a core): the daemon's thread
    pool kept the free chunks of each thread's peak apart, its RSS growing ~0.7 KB a launch with no
    Python object growing. run_service limits the three services to two (common/malloc.py)."""
    import subprocess
    import sys

    repo = str(Path(__file__).resolve().parents[2])

    def heaps(limit: bool) -> int:
        done = subprocess.run([sys.executable, "-c", _ARENAS.format(repo=repo, limit=limit, heaps=_HEAPS)],
                              capture_output=True, text=True, timeout=60, check=True)
        return int(done.stdout.strip())

    assert heaps(limit=True) <= 2
    assert heaps(limit=False) > 2  # the test tells the two apart: without the limit, more arenas


_TOY_SERVICE = """
import asyncio, ctypes, os, signal, sys, tempfile, threading
sys.path.insert(0, {repo!r})
from services.common import service

together = threading.Barrier(4)  # four pool threads alive at once (the default pool has 6 on 2 cores)

def work():
    together.wait()
    kept = [bytearray(700) for _ in range(2000)]
    together.wait()
    del kept[::2]

{heaps}

async def probe(path):
    await asyncio.gather(*(asyncio.to_thread(work) for _ in range(4)))
    print(heaps(), flush=True)
    os.kill(os.getpid(), signal.SIGTERM)

async def noop():
    pass

async def start():
    listener = service.listen_unix({sock!r})
    return service.Serving(listener=listener, probe=probe, stop=noop)

sys.exit(asyncio.run(service.run_service("toy", start)))
"""


def test_run_service_keeps_two_arenas(tmp_path: Path) -> None:
    """The scaffold of apiserver, daemon and highlevel sets the limit before their thread pools start:
    a toy service's 4 pool threads allocating at once share two arenas."""
    import subprocess
    import sys

    repo = str(Path(__file__).resolve().parents[2])
    code = _TOY_SERVICE.format(repo=repo, sock=str(tmp_path / "toy.sock"), heaps=_HEAPS)
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "LISTEN_FDS")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.split()[0]) <= 2
