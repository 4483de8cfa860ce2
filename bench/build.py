"""docker build of a 10-step Dockerfile (busybox, a COPY, three RUNs, config steps) through the
docker CLI with the classic builder (DOCKER_BUILDKIT=0): cold (--no-cache: every step made) and
cached (every step reused), Skiff beside a private Debian dockerd when one is installed (started as
the conformance runner starts it, scripts/conformance.d/engines.py, with roots of its own). Both
engines run at once and take turns, build after build. Medians of N runs, Skiff's ratio to
dockerd, each engine's CPU time a cached build (its processes and their children) and the load
average before and after are printed: the machine may be shared, and wall times follow its load.

Usage (as root): .venv/bin/python bench/build.py [--runs N] [--no-dockerd]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(CHECKOUT))
sys.path.insert(0, str(CHECKOUT / "scripts" / "conformance.d"))

from engines import DockerdEngine, Engine, EngineError, SkiffEngine  # noqa: E402

from tests.e2e.stack import busybox_archive  # noqa: E402

DOCKERFILE = """\
FROM busybox:latest
ENV APP=bench
WORKDIR /app
COPY payload/ /app/payload/
RUN cat /app/payload/* > /app/all.txt
RUN echo step > /app/step.txt && wc -c /app/all.txt
RUN ls -la /app > /app/listing.txt
LABEL bench=build
EXPOSE 8080
CMD ["cat", "/app/all.txt"]
"""


def make_context(folder: Path) -> Path:
    (folder / "payload").mkdir(parents=True)
    (folder / "Dockerfile").write_text(DOCKERFILE)
    for i in range(20):
        (folder / "payload" / f"f{i}.txt").write_text(f"file {i}\n" * 200)
    return folder


def docker_build(engine: Engine, context: Path, *flags: str) -> float:
    env = dict(os.environ, DOCKER_HOST=engine.docker_host, DOCKER_BUILDKIT="0",
               DOCKER_CONFIG=str(engine.root / "docker-config"))
    start = time.perf_counter()
    out = subprocess.run(["docker", "build", "-q", *flags, "-t", "bench-build:latest", str(context)],
                         capture_output=True, text=True, timeout=300, env=env)
    elapsed = time.perf_counter() - start
    if out.returncode != 0:
        raise EngineError(f"{engine.kind}: docker build failed: {out.stderr[-800:]}")
    return elapsed


def engine_cpu(engine: Engine) -> float:
    """Seconds of CPU (user + system) the engine's processes and their children have used so far: the
    machine may be shared, and CPU time is what a noisy neighbour disturbs least."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                children.setdefault(int(_stat(int(entry))[1]), []).append(int(entry))
            except (OSError, IndexError):
                continue
    total, pending = 0, [p.pid for p in engine.procs]
    while pending:
        pid = pending.pop()
        try:
            fields = _stat(pid)
        except (OSError, IndexError):
            continue
        total += int(fields[11]) + int(fields[12])
        pending += children.get(pid, [])
    return total / os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str]:
    """/proc/<pid>/stat's fields after the command's name (state first)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


@dataclass
class Figures:
    cold: list[float] = field(default_factory=list)
    cached: list[float] = field(default_factory=list)
    cached_cpu: float = 0.0   # the engine's CPU seconds a cached build


def measure(engines: dict[str, Engine], context: Path, runs: int) -> dict[str, Figures]:
    """The engines take turns, build after build: a load that comes and goes weighs on both alike."""
    figures = {kind: Figures() for kind in engines}
    for engine in engines.values():
        docker_build(engine, context, "--no-cache")  # warm: the first run pays for one-time setup
    for _ in range(runs):
        for kind, engine in engines.items():
            figures[kind].cold.append(docker_build(engine, context, "--no-cache"))
    for engine in engines.values():
        docker_build(engine, context)  # the cache as the last cold build left it
    cpu_before = {kind: engine_cpu(engine) for kind, engine in engines.items()}
    for _ in range(runs):
        for kind, engine in engines.items():
            figures[kind].cached.append(docker_build(engine, context))
    for kind, engine in engines.items():
        figures[kind].cached_cpu = (engine_cpu(engine) - cpu_before[kind]) / runs
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--no-dockerd", action="store_true", help="measure Skiff only")
    args = parser.parse_args()
    if os.geteuid() != 0 or shutil.which("docker") is None:
        print("bench/build.py needs root and the docker CLI", file=sys.stderr)
        return 2
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="skiff-bench-build-") as td, contextlib.ExitStack() as stack:
        root = Path(td)
        context = make_context(root / "context")
        archive = busybox_archive(root, "busybox:latest")
        kinds: list[str] = ["skiff"] if args.no_dockerd or shutil.which("dockerd") is None else ["skiff", "dockerd"]
        engines: dict[str, Engine] = {}
        for kind in kinds:
            engine: Engine = SkiffEngine(root / kind, CHECKOUT) if kind == "skiff" else DockerdEngine(root / kind)
            stack.callback(_close, kind, engine)
            engine.start()
            engine.load_images(archive, ["busybox:latest"])
            engines[kind] = engine
        results = measure(engines, context, args.runs)
    load_after = os.getloadavg()
    print(f"docker build, 10 steps, classic builder, median of {args.runs} runs (engines taking turns)")
    print(f"{'engine':<10}{'cold (s)':>12}{'cached (s)':>12}{'cached CPU (ms)':>18}")
    medians = {kind: (statistics.median(f.cold), statistics.median(f.cached)) for kind, f in results.items()}
    for kind, (cold, cached) in medians.items():
        print(f"{kind:<10}{cold:>12.3f}{cached:>12.3f}{results[kind].cached_cpu * 1000:>18.1f}")
    if "dockerd" in medians:
        (sc, sh), (dc, dh) = medians["skiff"], medians["dockerd"]
        print(f"{'ratio':<10}{sc / dc:>12.2f}{sh / dh:>12.2f}   (Skiff / dockerd; targets: cold <= 0.70, "
              f"cached <= 0.50)")
    print("load average (1, 5, 15 min): before " + " ".join(f"{x:.2f}" for x in load_before)
          + ", after " + " ".join(f"{x:.2f}" for x in load_after) + f" ({os.cpu_count()} CPUs)")
    return 0


def _close(kind: str, engine: Engine) -> None:
    leftovers = engine.close()
    if leftovers:
        print(f"{kind}: left behind: {leftovers}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
