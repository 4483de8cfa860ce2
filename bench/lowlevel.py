"""``run`` of /bin/true from a busybox bundle, and create/start/delete split, for skiff-lowlevel,
runc and crun side by side: medians and ratios to runc.

The rows, and the exact command each runs (printed at the top of the output too):

- ``skiff-lowlevel``: the installed command, as users and tools that take a runc-compatible binary
  call it: ``<venv>/bin/skiff-lowlevel`` (services/lowlevel/skiff-lowlevel, a /bin/sh script), the
  one pip installed beside this Python, else the first on PATH. Its ``start`` and ``delete`` of a
  container in the plain case run in the shell alone (no Python: see the script); every other
  command, and those two whenever anything is in doubt, exec ``python -I -S .../__main__.py``.
- ``skiff-lowlevel (python)``: ``python -I -S services/lowlevel/__main__.py`` with no shell in
  front (services.common.config.resolve_runtime's argv): every command in Python, as the engine's
  shim runs it when it does not fork it in-process.

Usage (as root): .venv/bin/python bench/lowlevel.py [--runs N] [--max-installed-ratio R]
The runtimes take turns, one round of each per run, so that a change of load on the machine
weighs on all of them alike instead of on whichever was being measured at the time.
crun refuses this machine's hybrid cgroups unless it runs in a private mount namespace with
/sys/fs/cgroup/unified/cgroup.controllers covered by an empty file: the benchmark does exactly that.
"""

from __future__ import annotations

import argparse
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
from tests.support.busybox import make_bundle  # noqa: E402

CRUN_WRAPPER = 'set -e; e=$(mktemp); mount --bind "$e" /sys/fs/cgroup/unified/cgroup.controllers; rm -f "$e"; exec "$@"'


INSTALLED = "skiff-lowlevel"
PYTHON = "skiff-lowlevel (python)"
WRAPPER_SOURCE = Path(__file__).resolve().parents[1] / "services" / "lowlevel" / "skiff-lowlevel"


def installed_command() -> list[str] | None:
    """The skiff-lowlevel command of this Python's install (its bin/), else the one on PATH."""
    beside = Path(sys.executable).parent / "skiff-lowlevel"
    found = str(beside) if beside.exists() else shutil.which("skiff-lowlevel")
    if found and Path(found).resolve().read_bytes() != WRAPPER_SOURCE.read_bytes():
        # pip copies the script at install time: a stale copy would be measured instead.
        print(f"warning: {found} differs from {WRAPPER_SOURCE} (reinstall: pip install -e .)")
    return [found] if found else None


def runtime_argv(name: str) -> list[str] | None:
    if name == INSTALLED:
        return installed_command()
    try:
        argv = resolve_runtime("skiff-lowlevel" if name == PYTHON else name)
    except FileNotFoundError:
        return None
    if name == "crun":
        return ["unshare", "-m", "--propagation", "private", "sh", "-c", CRUN_WRAPPER, "crun", *argv]
    return argv


def timed(argv: list[str], cwd: Path, cpu: list[float]) -> float:
    """Wall time of one command; its CPU time (user + system, its own and that of the children it
    waited for) goes to ``cpu``. A blocking wait: Popen.wait(timeout) polls with sleeps of up to
    50 ms, which would swamp the figures; the alarm still bounds a hung runtime."""
    t = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    signal.alarm(60)
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        signal.alarm(0)
    elapsed = time.perf_counter() - t
    proc.returncode = code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise subprocess.CalledProcessError(code, argv)
    cpu.append(usage.ru_utime + usage.ru_stime)
    return elapsed


def bench_round(
    name: str, argv: list[str], bundle: Path, state: Path, figures: dict[str, list[float]], cpu: dict[str, list[float]]
) -> None:
    """One run, then one create/start/delete, of one runtime."""
    root = ["--root", str(state / name)]
    cid = f"skiff-bench-{uuid.uuid4().hex[:8]}"
    figures["run"].append(timed([*argv, *root, "run", cid], bundle, cpu["run"]))
    cid = f"skiff-bench-{uuid.uuid4().hex[:8]}"
    figures["create"].append(timed([*argv, *root, "create", cid], bundle, cpu["create"]))
    figures["start"].append(timed([*argv, *root, "start", cid], bundle, cpu["start"]))
    # Wait for /bin/true to be gone: ``state`` says stopped.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        out = subprocess.run([*argv, *root, "state", cid], capture_output=True, text=True, timeout=10)
        if '"stopped"' in out.stdout:
            break
    figures["delete"].append(timed([*argv, *root, "delete", cid], bundle, cpu["delete"]))


def print_table(results: dict[str, dict[str, float]]) -> None:
    base = results.get("runc")
    print(f"{'runtime':26}" + "".join(f"{k:>18}" for k in ("run", "create", "start", "delete")))
    for name, fig in results.items():
        cells = []
        for k in ("run", "create", "start", "delete"):
            ratio = f" ({fig[k] / base[k]:.2f}x)" if base else ""
            cells.append(f"{fig[k]:8.1f}{ratio:>10}")
        print(f"{name:26}" + "".join(cells))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--max-installed-ratio", type=float, default=None,
                        help="exit 1 when the installed command's run median exceeds this ratio to runc's")
    args = parser.parse_args()
    compile_sources()  # as installed (bench/bytecode.py)
    work = Path(tempfile.mkdtemp(prefix="skiff-bench-"))
    try:
        bundle = make_bundle(work / "bundle", ["/bin/true"])
        runtimes: dict[str, list[str]] = {}
        for name in (INSTALLED, PYTHON, "runc", "crun"):
            argv = runtime_argv(name)
            if argv is None:
                print(f"{name}: not installed, skipped")
            else:
                runtimes[name] = argv
                print(f"{name:26}{' '.join(argv)}")
        samples: dict[str, dict[str, list[float]]] = {
            name: {"run": [], "create": [], "start": [], "delete": []} for name in runtimes
        }
        cpu_samples: dict[str, dict[str, list[float]]] = {
            name: {"run": [], "create": [], "start": [], "delete": []} for name in runtimes
        }
        for _ in range(args.runs):
            for name, argv in list(runtimes.items()):
                try:
                    bench_round(name, argv, bundle, work / "state", samples[name], cpu_samples[name])
                except subprocess.CalledProcessError as e:
                    print(f"{name}: failed ({e}), skipped")
                    del runtimes[name], samples[name], cpu_samples[name]
        results = {name: {k: statistics.median(v) * 1000 for k, v in fig.items()} for name, fig in samples.items()}
        print(f"medians over {args.runs} runs, ms (ratio to runc)")
        print_table(results)
        # Less swayed by other load on the machine than wall time. Not counted: what a command does
        # not wait for (the shell start's watchdog sleep, which it kills; runc's and crun's init).
        print("CPU time, user + system of the command and the children it waited for: medians, ms")
        cpu = {name: {k: statistics.median(v) * 1000 for k, v in fig.items()} for name, fig in cpu_samples.items()}
        print_table(cpu)
        base = results.get("runc")
        if args.max_installed_ratio is not None and base and INSTALLED in results:
            ratio = results[INSTALLED]["run"] / base["run"]
            if ratio > args.max_installed_ratio:
                print(f"installed skiff-lowlevel run: {ratio:.2f}x runc, above {args.max_installed_ratio}x")
                return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
