"""Tasks through skiff-highlevel, with the OCI runtime switched between skiff-lowlevel, runc and crun.

Prints medians: create+start+wait+delete of /bin/true, the time to start N containers
concurrently, and the memory (RSS, PSS from /proc/PID/smaps_rollup) of each shim with N running,
beside containerd-shim-runc-v2's figures on this machine (12.8 MiB RSS, 2.6 MiB PSS).

    .venv/bin/python bench/highlevel.py [--runs 15] [--count 50] [--runtimes skiff-lowlevel,runc,crun]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bytecode import compile_sources  # noqa: E402
from services.common.config import resolve_runtime  # noqa: E402
from services.gen.skiff.highlevel.v1 import (  # noqa: E402
    CreateTaskRequest,
    DeleteTaskRequest,
    KillRequest,
    StartRequest,
    StateRequest,
    WaitRequest,
)
from tests.support.tasks import Bundles, Highlevel  # noqa: E402

CONTAINERD_SHIM = {"rss_mib": 12.8, "pss_mib": 2.6}


def smaps_rollup(pid: int) -> tuple[float, float]:
    """(RSS, PSS) in MiB."""
    values: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[0] in ("Rss:", "Pss:"):
                values[parts[0]] = int(parts[1])
    return values.get("Rss:", 0) / 1024, values.get("Pss:", 0) / 1024


class CrunHighlevel(Highlevel):
    """crun on this cgroup v1 hybrid host needs the unified hierarchy to look empty: highlevel (and
    so its shims and crun) runs in a private mount namespace with cgroup.controllers covered."""

    def start(self) -> None:
        empty = self.prefix / "empty-controllers"
        empty.write_text("")
        self.starts += 1
        log_path = self.prefix / f"highlevel-{self.starts}.log"
        self.log_paths.append(log_path)
        script = (f"mount --bind {empty} /sys/fs/cgroup/unified/cgroup.controllers && exec {sys.executable} "
                  f"-m services.highlevel --root {self.prefix} --runtime {self.runtime}")
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                                         stdout=subprocess.DEVNULL, stderr=log, cwd=Path(__file__).parents[1])
        from tests.support.tasks import wait_for

        wait_for(self._accepts, 20, "highlevel socket")


async def one_run(hl: Highlevel, bundle: Path, id_: str) -> float:
    async with hl.client() as tasks:
        began = time.perf_counter()
        await tasks.create(CreateTaskRequest(id=id_, bundle=str(bundle)))
        waits = tasks.wait(WaitRequest(id=id_), timeout=60)
        await waits.__anext__()
        await tasks.start(StartRequest(id=id_))
        final = await waits.__anext__()
        await waits.aclose()
        await tasks.delete(DeleteTaskRequest(id=id_))
        elapsed = time.perf_counter() - began
        if final.exit.exit_code != 0:
            raise RuntimeError(f"/bin/true exited {final.exit.exit_code}")
        return elapsed


async def concurrent(hl: Highlevel, bundles: Bundles, count: int) -> tuple[float, list[int]]:
    ids = [f"bh{uuid.uuid4().hex[:8]}-{n}" for n in range(count)]
    paths = {i: bundles.make(i, ["sleep", "1000"]) for i in ids}
    async with hl.client() as tasks:
        async def launch(id_: str) -> int:
            await tasks.create(CreateTaskRequest(id=id_, bundle=str(paths[id_])), timeout=120)
            await tasks.start(StartRequest(id=id_), timeout=60)
            return (await tasks.state(StateRequest(id=id_))).shim_pid

        began = time.perf_counter()
        shim_pids = await asyncio.gather(*(launch(i) for i in ids))
        elapsed = time.perf_counter() - began
        memory = [smaps_rollup(p) for p in shim_pids]
        # The shim zygote (if used) holds the pages its shims share: its PSS is part of their cost.
        zygote = hl.paths.highlevel_run / "zygote.sock.pid"
        with contextlib.suppress(OSError, ValueError):
            z_rss, z_pss = smaps_rollup(int(zygote.read_text()))
            print(f"  shim zygote: RSS {z_rss:.1f} MiB, PSS {z_pss:.2f} MiB ({z_pss / count:.3f} MiB per shim)")
            memory = [(rss, pss + z_pss / count) for rss, pss in memory]

        async def remove(id_: str) -> None:
            await tasks.kill(KillRequest(id=id_, signal=signal.SIGKILL))
            async for message in tasks.wait(WaitRequest(id=id_), timeout=60):
                if message.exited:
                    break
            await tasks.delete(DeleteTaskRequest(id=id_), timeout=60)

        await asyncio.gather(*(remove(i) for i in ids))
    rss = statistics.median(m[0] for m in memory)
    pss = statistics.median(m[1] for m in memory)
    return elapsed, [rss, pss]  # type: ignore[list-item]


def bench_runtime(name: str, runs: int, count: int) -> dict[str, float] | None:
    try:
        resolve_runtime(name)
    except FileNotFoundError:
        print(f"{name}: not installed, skipped")
        return None
    prefix = Path(tempfile.mkdtemp(prefix="skiff-bench-"))
    hl = (CrunHighlevel if name == "crun" else Highlevel)(prefix, name)
    try:
        hl.start()
        bundles = Bundles(prefix / "bundles")
        true_bundle = bundles.make("true", ["true"])
        times = [asyncio.run(one_run(hl, true_bundle, f"bt{uuid.uuid4().hex[:10]}")) for _ in range(runs)]
        elapsed, (rss, pss) = asyncio.run(concurrent(hl, bundles, count))
        return {"run_ms": statistics.median(times) * 1000, "start_n_s": elapsed, "rss_mib": rss, "pss_mib": pss}
    except Exception as exc:  # noqa: BLE001 - a runtime that fails here is reported and skipped
        print(f"{name}: failed ({exc!r}), skipped")
        return None
    finally:
        hl.teardown()
        shutil.rmtree(prefix, ignore_errors=True)


def shim_import_ms(runs: int) -> float:
    code_root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=code_root)
    samples = []
    for _ in range(runs):
        began = time.perf_counter()
        subprocess.run([sys.executable, "-S", "-c", "import services.shim.server"], env=env, check=True, timeout=30)
        samples.append(time.perf_counter() - began)
    return statistics.median(samples) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--runtimes", default="skiff-lowlevel,runc,crun")
    args = parser.parse_args()
    compile_sources()  # as installed (bench/bytecode.py)
    print(f"shim interpreter start + imports (python -S): {shim_import_ms(args.runs):.1f} ms median")
    results = {}
    for name in args.runtimes.split(","):
        figures = bench_runtime(name, args.runs, args.count)
        if figures:
            results[name] = figures
    print(f"\n{'runtime':<16}{'run /bin/true':>15}{f'start {args.count}':>12}{'shim RSS':>11}{'shim PSS':>11}")
    for name, f in results.items():
        print(f"{name:<16}{f['run_ms']:>12.1f} ms{f['start_n_s']:>10.2f} s"
              f"{f['rss_mib']:>7.1f} MiB{f['pss_mib']:>7.2f} MiB")
    ref = CONTAINERD_SHIM
    print(f"{'containerd-shim':<16}{'':>15}{'':>12}{ref['rss_mib']:>7.1f} MiB{ref['pss_mib']:>7.2f} MiB  (reference)")
    for name, f in results.items():
        print(f"{name}: shim RSS {f['rss_mib'] / ref['rss_mib']:.2f}x, PSS {f['pss_mib'] / ref['pss_mib']:.2f}x "
              "of containerd-shim-runc-v2")
    return 0


if __name__ == "__main__":
    sys.exit(main())
