"""Where the time of a ``docker run`` and of ``GET /containers/json`` goes, service by service.

CPU measures only (wall clock is noise on a loaded box): each service's utime+stime from /proc
before and after a phase, divided by the calls made; the whole engine's (services, shims, runtime
processes) from a cpuacct cgroup that ``skiff up`` starts in; and, with py-spy installed (its
path in ``--py-spy``), sampled stacks of the three services folded into the functions that took
the samples (self) and the frames they passed through (cumulative), per phase.

Usage (as root): .venv/bin/python bench/profile_engine.py [--runs 20] [--count 50] [--lists 300]
    [--list-path /containers/json?all=1]... [--py-spy PATH]  (--runs 0: no docker run phase)
"""

from __future__ import annotations

import argparse
import collections
import http.client
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.engine import cli, skiff  # noqa: E402
from tests.e2e.netstack import cgroup_parent  # noqa: E402
from tests.support.busybox import docker_archive  # noqa: E402

SERVICES = ("services.apiserver", "services.daemon", "services.highlevel")
CPUACCT = Path("/sys/fs/cgroup/cpuacct")
TICK = os.sysconf("SC_CLK_TCK")
# bench/engine.py's list, `docker ps` (CLI 20.10), docker-py's APIClient.containers()
LIST_PATHS = ("/containers/json?all=1", "/v1.41/containers/json",
              "/v1.41/containers/json?limit=-1&all=0&size=0&trunc_cmd=0")
PY_SPY_EXTRA: list[str] = []  # ["--gil"]: sample only the thread holding the GIL, Python's CPU time
WALL: dict[str, list[float]] = {}  # per phase, each call's wall time (noise on a loaded box: CPU is the figure)


def service_pids(root: Path) -> dict[str, int]:
    """The pid of each service started by ``skiff up --root root`` (found by its command line)."""
    found: dict[str, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [a.decode(errors="replace") for a in argv]
        for module in SERVICES:
            if module in words and str(root) in words:
                found[module] = int(entry.name)
    return found


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


ROOTS: dict[int, Path] = {}  # a service's pid: its engine's root (set by main)


def _usage(folder: Path) -> int | None:
    """cpuacct.usage (ns) of the engine's containers' cgroup parent: shims, runtime processes and the
    containers themselves (None when absent: nothing launched yet, or no cgroup v1 cpuacct)."""
    try:
        return int((folder / "cpuacct.usage").read_text())
    except (OSError, ValueError):
        return None


@contextmanager
def engine_cgroup() -> Iterator[Path | None]:
    """A cpuacct cgroup for ``skiff up`` and everything it starts (None when cgroup v1 cpuacct is absent)."""
    if not CPUACCT.is_dir():
        yield None
        return
    folder = CPUACCT / f"skiff-speed-profile-{os.getpid()}"
    folder.mkdir()
    try:
        yield folder
    finally:
        deadline = time.monotonic() + 10
        while True:
            try:
                folder.rmdir()
                break
            except OSError:
                if time.monotonic() > deadline:
                    print(f"left {folder} (still in use)", file=sys.stderr)
                    break
                time.sleep(0.1)


class Sampler:
    """py-spy on each service for one phase; ``folded()`` gives its stacks (raw format) per service."""

    def __init__(self, py_spy: str | None, pids: dict[str, int], work: Path, phase: str) -> None:
        self.procs: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
        if not py_spy:
            return
        for module, pid in pids.items():
            out = work / f"{phase}-{module}.txt"
            self.procs[module] = (subprocess.Popen(
                [py_spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "250", "--nonblocking",
                 *PY_SPY_EXTRA, "--output", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), out)
        time.sleep(1.0)  # py-spy attaches

    def folded(self) -> dict[str, collections.Counter[str]]:
        result: dict[str, collections.Counter[str]] = {}
        for module, (proc, out) in self.procs.items():
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            stacks: collections.Counter[str] = collections.Counter()
            if out.exists():
                for line in out.read_text().splitlines():
                    stack, _, count = line.rpartition(" ")
                    if count.isdigit():
                        stacks[stack] += int(count)
            result[module] = stacks
        return result


def frame_name(frame: str) -> str:
    """``fn (path/to/module.py:12)`` -> ``fn (module.py)``: lines merged, paths shortened."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    parts = where.split("/")
    if "services" in parts:
        where = "/".join(parts[parts.index("services") + 1:])
    elif "site-packages" in parts:
        where = "/".join(parts[parts.index("site-packages") + 1:])
    else:
        where = parts[-1]
    return f"{name} ({where})"


def summarise(stacks: collections.Counter[str], top: int) -> list[str]:
    total = sum(stacks.values())
    if not total:
        return ["    (no samples)"]
    own: collections.Counter[str] = collections.Counter()
    through: collections.Counter[str] = collections.Counter()
    for stack, count in stacks.items():
        frames = [frame_name(f) for f in stack.split(";") if f]
        if not frames:
            continue
        own[frames[-1]] += count
        for f in set(frames):
            through[f] += count
    lines = [f"    {total} samples; self:"]
    lines += [f"      {100 * c / total:5.1f}%  {f}" for f, c in own.most_common(top)]
    lines.append("    cumulative (skiff's own frames):")
    ours = [(f, c) for f, c in through.most_common() if ".py)" in f and not f.startswith("<module>")
            and any(f.endswith(f"{p})") or f"({p}/" in f for p in ("apiserver", "daemon", "highlevel",
                                                                      "dockermodel", "common", "gen"))]
    lines += [f"      {100 * c / total:5.1f}%  {f}" for f, c in ours[:top]]
    return lines


def phase(name: str, calls: int, pids: dict[str, int], cgroup: Path | None, py_spy: str | None, work: Path,
          action: Callable[[], None], top: int) -> list[str]:
    sampler = Sampler(py_spy, pids, work, name.split()[0])
    before = {m: cpu_seconds(p) for m, p in pids.items()}
    group_before = int((cgroup / "cpuacct.usage").read_text()) if cgroup else 0
    shims = CPUACCT / cgroup_parent(ROOTS[next(iter(pids.values()))])
    shims_before = _usage(shims)
    children_before = os.times()
    action()
    children_after = os.times()
    group_after = int((cgroup / "cpuacct.usage").read_text()) if cgroup else 0
    shims_after = _usage(shims)
    after = {m: cpu_seconds(p) for m, p in pids.items()}
    folded = sampler.folded()
    lines = [f"## {name}: CPU ms per call (over {calls} calls)"]
    if WALL.get(name):
        lines.append(f"  {'wall median':22} {1000 * statistics.median(WALL[name]):8.2f}")
    for module in pids:
        lines.append(f"  {module:22} {1000 * (after[module] - before[module]) / calls:8.2f}")
    if cgroup:
        lines.append(f"  {'engine (all processes)':22} {(group_after - group_before) / 1e6 / calls:8.2f}")
    if shims_before is not None and shims_after is not None:
        lines.append(f"  {'shims+containers':22} {(shims_after - shims_before) / 1e6 / calls:8.2f}")
    client = (children_after.children_user + children_after.children_system
              - children_before.children_user - children_before.children_system)
    lines.append(f"  {'client (docker CLI)':22} {1000 * client / calls:8.2f}")
    for module, stacks in folded.items():
        lines.append(f"  {module} (py-spy):")
        lines += summarise(stacks, top)
    return lines


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--lists", type=int, default=300)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--network", default="none", help="the docker run phase's network (bridge: the default one)")
    parser.add_argument("--list-path", action="append",
                        help="the list's path and query (repeatable; default: bench/engine.py's, docker ps's, "
                             "docker-py's)")
    parser.add_argument("--py-spy", default=shutil.which("py-spy"))
    parser.add_argument("--gil", action="store_true",
                        help="py-spy samples only the thread holding the GIL (CPU in Python, no thread waits)")
    args = parser.parse_args()
    if args.gil:
        PY_SPY_EXTRA.append("--gil")
    work = Path(tempfile.mkdtemp(prefix="skiff-profile-"))
    report: list[str] = []
    try:
        tar = docker_archive(work / "busybox.tar", work / "rootfs")
        with engine_cgroup() as cgroup, skiff(work, cgroup) as sock:
            pids = service_pids(sock.parents[2])
            ROOTS.update({pid: sock.parents[2] for pid in pids.values()})
            if cli(sock, "load", "-i", str(tar)).returncode != 0:
                raise RuntimeError("docker load failed")
            cli(sock, "run", "--rm", "--network", "none", "busybox", "true")  # warm-up

            run_phase = f"run --rm --network {args.network} busybox true"

            def runs() -> None:
                for _ in range(args.runs):
                    t = time.perf_counter()
                    done = cli(sock, "run", "--rm", "--network", args.network, "busybox", "true")
                    WALL.setdefault(run_phase, []).append(time.perf_counter() - t)
                    if done.returncode != 0:
                        raise RuntimeError(done.stderr.decode())

            if args.runs:
                report += phase(run_phase, args.runs, pids, cgroup, args.py_spy, work, runs, args.top)
            launch_phase = f"{args.count} x run -d --network none at once (bench/engine.py's)"

            def launches() -> None:
                t = time.perf_counter()
                with ThreadPoolExecutor(max_workers=args.count) as pool:
                    done = list(pool.map(lambda i: cli(sock, "run", "-d", "--network", "none", "--name",
                                                       f"skiff-prof-{i}", "busybox", "sleep", "600"),
                                         range(args.count)))
                WALL.setdefault(launch_phase, []).append(time.perf_counter() - t)
                failed = [d.stderr.decode().strip() for d in done if d.returncode != 0]
                if failed:
                    raise RuntimeError(f"{len(failed)} launches failed: {failed[0]}")

            report += phase(launch_phase, args.count, pids, cgroup, args.py_spy, work, launches, args.top)
            for path in (args.list_path or LIST_PATHS) if args.lists > 0 else ():
                list_phase = f"GET {path} ({args.count} running, keep-alive)"

                def lists(path: str = path, list_phase: str = list_phase) -> None:
                    conn = http.client.HTTPConnection("localhost", timeout=30)
                    conn.sock = socket.socket(socket.AF_UNIX)
                    conn.sock.connect(str(sock))
                    for _ in range(args.lists):
                        t = time.perf_counter()
                        conn.request("GET", path)
                        conn.getresponse().read()
                        WALL.setdefault(list_phase, []).append(time.perf_counter() - t)
                    conn.close()

                report += phase(list_phase, args.lists, pids, cgroup, args.py_spy, work, lists, args.top)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
