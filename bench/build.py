"""docker build of a 10-step Dockerfile (busybox, a COPY, three RUNs, config steps) through the
docker CLI with the classic builder (DOCKER_BUILDKIT=0): cold (--no-cache: every step made) and
cached (every step reused), Skiff beside a private Debian dockerd when one is installed (started as
the conformance runner starts it, scripts/conformance.d/engines.py, with roots of its own).
Medians of N runs and Skiff's ratio to dockerd printed.

Usage (as root): .venv/bin/python bench/build.py [--runs N] [--no-dockerd]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
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


def measure(engine: Engine, context: Path, runs: int) -> tuple[float, float]:
    docker_build(engine, context, "--no-cache")  # warm: the first run pays for one-time setup
    cold = [docker_build(engine, context, "--no-cache") for _ in range(runs)]
    cached = [docker_build(engine, context) for _ in range(runs)]
    return statistics.median(cold), statistics.median(cached)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-dockerd", action="store_true", help="measure Skiff only")
    args = parser.parse_args()
    if os.geteuid() != 0 or shutil.which("docker") is None:
        print("bench/build.py needs root and the docker CLI", file=sys.stderr)
        return 2
    results: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory(prefix="skiff-bench-build-") as td:
        root = Path(td)
        context = make_context(root / "context")
        archive = busybox_archive(root, "busybox:latest")
        kinds: list[str] = ["skiff"] if args.no_dockerd or shutil.which("dockerd") is None else ["skiff", "dockerd"]
        for kind in kinds:
            engine: Engine = SkiffEngine(root / kind, CHECKOUT) if kind == "skiff" else DockerdEngine(root / kind)
            try:
                engine.start()
                engine.load_images(archive, ["busybox:latest"])
                results[kind] = measure(engine, context, args.runs)
            finally:
                leftovers = engine.close()
                if leftovers:
                    print(f"{kind}: left behind: {leftovers}", file=sys.stderr)
    print(f"docker build, 10 steps, classic builder, median of {args.runs} runs")
    print(f"{'engine':<10}{'cold (s)':>12}{'cached (s)':>12}")
    for kind, (cold, cached) in results.items():
        print(f"{kind:<10}{cold:>12.3f}{cached:>12.3f}")
    if "dockerd" in results:
        (sc, sh), (dc, dh) = results["skiff"], results["dockerd"]
        print(f"{'ratio':<10}{sc / dc:>12.2f}{sh / dh:>12.2f}   (Skiff / dockerd; targets: cold <= 0.70, "
              f"cached <= 0.50)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
