"""The whole engine through the same docker CLI: Skiff against Debian's dockerd 20.10.

Figures (medians; ratios Skiff/dockerd, lower is better):
- ``docker run --rm busybox true`` with ``--network none`` and with the default network;
- 50 ``docker run -d`` launched at once: wall time and launches per second;
- ``GET /containers/json`` with those 50 containers;
- memory per running container: the PSS (/proc/PID/smaps_rollup) the engine's own processes have
  with those 50 running, less what they had with none, over 50. Skiff's: apiserver, daemon,
  highlevel, every shim and the shim zygote; dockerd's: dockerd, containerd and every
  containerd-shim-runc-v2 (the containers' own processes are neither's).

Each engine runs under its own temporary root and socket; dockerd is started by the benchmark
when installed and stopped after, with the host's iptables rules and docker0 put back as found.
Both run for the whole benchmark and take turns, sample by sample (``measure``): on a machine whose
speed drifts by a third within minutes, one engine measured after the other compared two machines.
Their runtime state is on a tmpfs, as /run is where they are deployed (``runtime_tmpfs``). Each
sample starts on an idle machine (``settle``).
Usage (as root): .venv/bin/python bench/engine.py [--runs N] [--count 50] [--bursts 3]
"""

from __future__ import annotations

import argparse
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
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bytecode import compile_sources  # noqa: E402
from services.common.paths import Paths  # noqa: E402
from tests.e2e.netstack import cgroup_parent, cleanup_networks, network_env, remove_cgroup_parent  # noqa: E402
from tests.support.busybox import docker_archive  # noqa: E402

DOCKER = shutil.which("docker")
READY_TIMEOUT = 60.0
# Runs not counted, each engine's: the first after an engine's start took 3x the rest (code run for
# the first time, cold caches) and the next few still trailed.
WARM_UP_RUNS = 5
SETTLED_IDLE = 0.9  # the share of the CPUs idle over a window before a sample (settle)


def wait_socket(path: Path, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"engine exited with {proc.returncode}")
        with socket.socket(socket.AF_UNIX) as s:
            try:
                s.connect(str(path))
                return
            except OSError:
                time.sleep(0.05)
    raise RuntimeError(f"{path} not ready after {READY_TIMEOUT} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextmanager
def runtime_tmpfs(folder: Path) -> Iterator[None]:
    """A tmpfs for an engine's runtime state, as /run is on the machines they run on (dockerd's
    exec root and containerd's state below it, Skiff's <root>/run): on the disk (the bench's
    temporary folder), both paid ext4's inode allocation for files a reboot drops anyway. Unmounted
    (with whatever the engine left mounted below) whatever happens inside."""
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", str(folder)], check=True, timeout=30)
    try:
        yield
    finally:
        subprocess.run(["umount", "-R", str(folder)], capture_output=True, timeout=30, check=False)


@contextmanager
def dockerd(work: Path) -> Iterator[Path]:
    saved = subprocess.run(["iptables-save"], capture_output=True, timeout=30).stdout
    had_docker0 = Path("/sys/class/net/docker0").exists()
    sock = work / "docker.sock"
    with runtime_tmpfs(work / "exec"):
        log = open(work / "dockerd.log", "wb")  # noqa: SIM115 - closed in finally
        proc = subprocess.Popen(
            ["dockerd", "--host", f"unix://{sock}", "--data-root", str(work / "data"), "--exec-root",
             str(work / "exec"), "--pidfile", str(work / "dockerd.pid"), "--storage-driver", "overlay2"],
            stdout=log, stderr=log)
        try:
            wait_socket(sock, proc)
            yield sock
        finally:
            stop(proc)
            log.close()
            subprocess.run(["iptables-restore"], input=saved, timeout=30, check=False)
            if not had_docker0 and Path("/sys/class/net/docker0").exists():
                subprocess.run(["ip", "link", "del", "docker0"], timeout=30, check=False)
            subprocess.run(["umount", "-R", str(work / "data")], capture_output=True, timeout=30, check=False)


@contextmanager
def skiff(work: Path, cgroup: Path | None = None) -> Iterator[Path]:
    """A private engine under ``work``; with ``cgroup``, its services start in that cgroup (v1 cpuacct)."""
    root = work / "skiff-root"
    # Its own bridge, subnet and cgroup parent (as the tests do), all removed afterwards: an engine
    # keeps its default bridge when it stops, as dockerd keeps docker0, and the bench must leave none.
    env = {**os.environ, **network_env(root), "SKIFF_CGROUP_PARENT": cgroup_parent(root)}
    with runtime_tmpfs(root / "run"):

        def join() -> None:
            if cgroup is not None:
                (cgroup / "cgroup.procs").write_text(str(os.getpid()))

        proc = subprocess.Popen([sys.executable, "-m", "services.up", "up", "--root", str(root)], env=env,
                                stdout=subprocess.DEVNULL, stderr=open(work / "skiff.log", "wb"),  # noqa: SIM115
                                preexec_fn=join if cgroup is not None else None)
        sock = root / "run" / "skiff" / "skiff.sock"
        try:
            wait_socket(sock, proc)
            ready = time.monotonic() + READY_TIMEOUT
            while cli(sock, "info").returncode != 0 and time.monotonic() < ready:
                time.sleep(0.1)  # the API answers /_ping before the daemon behind it serves
            yield sock
        finally:
            # Stopping the engine leaves containers running by design: remove them first.
            ids = cli(sock, "ps", "-aq").stdout.decode().split()
            if ids:
                cli(sock, "rm", "-f", *ids)
            stop(proc)
            cleanup_networks(Paths(root))
            remove_cgroup_parent(root)


def cli(sock: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "DOCKER_HOST": f"unix://{sock}"}
    try:
        return subprocess.run([DOCKER or "docker", *args], env=env, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess([DOCKER or "docker", *args], 124, b"", b"timed out")


def _cpu_ticks() -> tuple[int, int]:
    """(idle, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return fields[3] + fields[4], sum(fields)


def settle(idle: float = SETTLED_IDLE, window: float = 0.05, within: float = 2.0) -> None:
    """Until the machine is idle for a window (or ``within`` passed): what the engine sampled before
    still does after its client returned (a dockerd run's shim and snapshot clean-up, Skiff's endpoint
    release) must not fall on the next sample, the other engine's."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        idle0, total0 = _cpu_ticks()
        time.sleep(window)
        idle1, total1 = _cpu_ticks()
        if total1 > total0 and (idle1 - idle0) / (total1 - total0) >= idle:
            return


def timed_run(sock: Path, network: str | None) -> float:
    args = ["run", "--rm", *(["--network", network] if network else []), "busybox", "true"]
    t = time.perf_counter()
    done = cli(sock, *args)
    elapsed = time.perf_counter() - t
    if done.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)}: {done.stderr.decode().strip()}")
    return elapsed


def list_latency(sock: Path, runs: int = 20) -> float:
    times = []
    for _ in range(runs):
        conn = http.client.HTTPConnection("localhost", timeout=30)
        conn.sock = socket.socket(socket.AF_UNIX)
        conn.sock.settimeout(30)
        conn.sock.connect(str(sock))
        t = time.perf_counter()
        conn.request("GET", "/containers/json?all=1")
        conn.getresponse().read()
        times.append(time.perf_counter() - t)
        conn.close()
    return statistics.median(times)


# What a process's command line names when it is one of the engine's own (its state folder is named too).
ENGINE_PROCESSES = {
    "skiff": ("services.apiserver", "services.daemon", "services.highlevel", "services.shim"),
    "dockerd": ("dockerd", "containerd", "containerd-shim-runc-v2"),
}
SHIM_PROCESSES = {"skiff": "services.shim", "dockerd": "containerd-shim-runc-v2"}


def engine_processes(name: str, folder: Path) -> dict[int, str]:
    """pid -> role of the engine's processes under ``folder`` (a Skiff service's role is its module;
    shims are re-parented to init, so /proc is searched rather than the engine's process tree)."""
    marks = ENGINE_PROCESSES[name]
    found: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if str(folder) not in " ".join(argv):
            continue
        if name == "skiff":
            module = argv[argv.index("-m") + 1] if "-m" in argv[:-1] else ""
            role = next((m for m in marks if module == m or module.startswith(m + ".")), "")
            role = module if role else ""
        else:
            role = os.path.basename(argv[0]) if os.path.basename(argv[0]) in marks else ""
        if role:
            found[int(entry)] = role
    return found


def pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass  # gone meanwhile
    return 0


def engine_pss(name: str, folder: Path) -> tuple[int, dict[str, int]]:
    """The engine's PSS in KiB, and by role (every shim's under one role)."""
    by_role: dict[str, int] = {}
    for pid, role in engine_processes(name, folder).items():
        by_role[role] = by_role.get(role, 0) + pss_kib(pid)
    return sum(by_role.values()), by_role


def settled_without_shims(name: str, folder: Path, timeout: float = 20.0) -> None:
    """Waits for the last ``run --rm``'s shim to be gone (the zygote stays: it is not a container's)."""
    deadline = time.monotonic() + timeout
    shim = SHIM_PROCESSES[name]
    while time.monotonic() < deadline:
        if not any(role == shim for role in engine_processes(name, folder).values()):
            return
        time.sleep(0.1)


def burst(name: str, sock: Path, count: int, folder: Path) -> dict[str, float]:
    """``count`` ``docker run -d`` at once; the memory they hold and the list's latency while they run."""
    fig: dict[str, float] = {}
    names = [f"skiff-bench-{i}" for i in range(count)]
    settled_without_shims(name, folder)
    idle_kib, idle_roles = engine_pss(name, folder)
    t = time.perf_counter()
    with ThreadPoolExecutor(max_workers=count) as pool:
        results = list(pool.map(lambda n: cli(sock, "run", "-d", "--network", "none", "--name", n, "busybox",
                                              "sleep", "300"), names))
    wall = time.perf_counter() - t
    failed = sum(r.returncode != 0 for r in results)
    fig[f"{count} x run -d, wall s"] = wall
    fig["launches per second"] = (count - failed) / wall
    fig["failed launches"] = float(failed)
    busy_kib, roles = engine_pss(name, folder)
    if count > failed:
        fig["memory per running container, KiB"] = float(busy_kib - idle_kib) / (count - failed)
        growth = ", ".join(f"{r} {(k - idle_roles.get(r, 0)) / 1024:+.2f}" for r, k in sorted(roles.items()))
        print(f"{name}: engine PSS {idle_kib / 1024:.1f} MiB with 0 running, {busy_kib / 1024:.1f} MiB with "
              f"{count - failed}; MiB gained by {growth}")
    fig[f"GET /containers/json ({count} containers), ms"] = list_latency(sock) * 1000
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda n: cli(sock, "rm", "-f", n), names))
    return fig


def measure(socks: dict[str, Path], folders: dict[str, Path], tar: Path, runs: int, count: int,
            bursts: int) -> dict[str, dict[str, float | str]]:
    """Every figure of every engine, the engines interleaved: run i of one engine, then run i of the
    other (in turns, first one then the other first), so that the machine's drift during the
    benchmark falls on both alike. Each figure is the median of its samples."""
    figs: dict[str, dict[str, float | str]] = {name: {} for name in socks}
    for name, sock in socks.items():
        loaded = cli(sock, "load", "-i", str(tar))
        if loaded.returncode != 0:
            raise RuntimeError(f"{name}: docker load: {loaded.stderr.decode().strip()}")

    def turns(i: int) -> list[str]:
        order = list(socks)
        return order if i % 2 == 0 else order[::-1]

    for label, network in (("run --network none", "none"), ("run (default network)", None)):
        samples: dict[str, list[float]] = {name: [] for name in socks}
        failed: dict[str, str] = {}
        for i in range(WARM_UP_RUNS):
            for name in turns(i):
                if name not in failed:
                    try:
                        timed_run(socks[name], network)
                    except RuntimeError as e:
                        failed[name] = f"failed: {e}"[:80]
        for i in range(runs):
            for name in turns(i):
                if name not in failed:
                    settle()
                    try:
                        samples[name].append(timed_run(socks[name], network))
                    except RuntimeError as e:
                        failed[name] = f"failed: {e}"[:80]
        for name in socks:
            figs[name][label] = failed.get(name) or statistics.median(samples[name]) * 1000
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in socks}
    for i in range(bursts):
        for name in turns(i):
            settle()
            rounds[name].append(burst(name, socks[name], count, folders[name]))
        if len(socks) == 2:
            a, b = (rounds[n][-1]["launches per second"] for n in socks)
            print(f"burst {i + 1}: launches per second {' / '.join(socks)} {a:.1f} / {b:.1f} = {a / b:.2f}")
    for name in socks:
        for key in rounds[name][0]:
            figs[name][key] = statistics.median(r[key] for r in rounds[name] if key in r)
    return figs


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--bursts", type=int, default=3, help="rounds of the concurrent launch (medians)")
    args = parser.parse_args()
    compile_sources()  # as installed (bench/bytecode.py)
    if DOCKER is None:
        print("the docker CLI is not installed: nothing to compare through", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="skiff-bench-engine-"))
    results: dict[str, dict[str, float | str]] = {}
    try:
        tar = docker_archive(work / "busybox.tar", work / "rootfs")
        engines = [("skiff", skiff)]
        if shutil.which("dockerd"):
            engines.append(("dockerd", dockerd))
        else:
            print("dockerd: not installed, skipped")
        folders = {name: work / name for name, _ in engines}
        with ExitStack() as stack:
            socks: dict[str, Path] = {}
            for name, starter in engines:
                folders[name].mkdir()
                socks[name] = stack.enter_context(starter(folders[name]))
            try:
                results = measure(socks, folders, tar, args.runs, args.count, args.bursts)
            except RuntimeError as e:
                print(e)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not results:
        return 1
    keys = list(next(iter(results.values())))
    print(f"medians over {args.runs} runs and {args.bursts} bursts, engines interleaved (times in ms unless said)")
    print(f"{'':44}" + "".join(f"{n:>14}" for n in results) + "         ratio")
    for k in keys:
        row = [results[n].get(k, "-") for n in results]
        cells = "".join(f"{v:14.1f}" if isinstance(v, float) else f"{str(v)[:14]:>14}" for v in row)
        ratio = ""
        if len(row) == 2 and all(isinstance(v, float) and v for v in row):
            ratio = f"{row[0] / row[1]:14.2f}"
        print(f"{k:44}{cells}{ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
