"""A real skiff-highlevel under a temp prefix, bundles sharing one busybox rootfs, leak checks."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grpclib.client import Channel

from services.common.config import resolve_runtime
from services.common.paths import Paths, resolve_paths
from services.gen.skiff.highlevel.v1 import TasksStub
from tests.support.busybox import build_rootfs, default_spec

RUNTIME_SWITCH_ENV = "SKIFF_TEST_RUNTIME"
# The integrator switches this default to skiff-lowlevel once it is ready.
DEFAULT_TEST_RUNTIME = "skiff-lowlevel"


def chosen_runtime() -> str:
    return os.environ.get(RUNTIME_SWITCH_ENV) or DEFAULT_TEST_RUNTIME


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Polls with a deadline instead of sleeping blindly."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if text.encode() in cmdline:
            found.append(int(entry))
    return found


def zombies_of(parents: set[int]) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == "Z" and int(fields[1]) in parents:
            found.append(int(entry))
    return found


def cgroup_dirs_named(id_: str) -> list[str]:
    found = []
    for controller in Path("/sys/fs/cgroup").iterdir():
        if (controller / id_).exists():
            found.append(str(controller / id_))
    return found


@dataclass(slots=True)
class Highlevel:
    """One skiff-highlevel process; restartable, killable with SIGKILL."""

    prefix: Path
    runtime: str
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    log_paths: list[Path] = field(default_factory=list)

    @property
    def paths(self):  # noqa: ANN201 - services.common.paths.Paths
        return resolve_paths(self.prefix)

    @property
    def socket(self) -> str:
        return str(self.paths.highlevel_socket)

    def start(self) -> None:
        self.starts += 1
        log_path = self.prefix / f"highlevel-{self.starts}.log"
        self.log_paths.append(log_path)
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "services.highlevel", "--root", str(self.prefix), "--runtime", self.runtime],
                stdout=subprocess.DEVNULL, stderr=log, env=dict(os.environ, SKIFF_LOG_FORMAT="json"))
        wait_for(self._accepts, 20, "highlevel socket")

    def _accepts(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"highlevel exited {self.proc.returncode}: {self.log_paths[-1].read_text()[-2000:]}")
        with socket.socket(socket.AF_UNIX) as s:
            try:
                s.connect(self.socket)
            except OSError:
                return False
        return True

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def shim_pids(self) -> dict[str, int]:
        pids = {}
        folder = self.paths.highlevel_run / "t"
        if folder.is_dir():
            for state in folder.iterdir():
                with contextlib.suppress(OSError, ValueError):
                    pid = int((state / "shim.pid").read_text())
                    # Only a live shim of this folder: a gone shim's pid may belong to anything now.
                    if str(state).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                        pids[state.name] = pid
        return pids

    def teardown(self) -> None:
        """Even after a failure: highlevel, every shim and container of this prefix go."""
        self.kill9()
        for pid in self.shim_pids().values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        remove_containers_and_processes(self.paths, self.runtime, self.prefix)

    def leftovers(self, ids: list[str]) -> list[str]:
        """Everything a removed task could leave behind, named; empty when clean."""
        left: list[str] = []
        run = self.paths.highlevel_run
        for sub in ("t", "s", "runtime-state"):
            folder = run / sub
            if folder.is_dir():
                left += [f"{sub}/{p.name}" for p in folder.iterdir()]
        # A shim exits right after answering its delete, which does not wait for that (tasks.py).
        with contextlib.suppress(AssertionError):  # still there after 5 s: named below
            wait_for(lambda: not processes_mentioning(str(run / "t")), 5, "the deleted tasks' shims gone")
        left += [f"process {p}" for p in processes_mentioning(str(run / "t"))]
        mounts = Path("/proc/self/mountinfo").read_text()
        left += [f"mount of {i}" for i in ids if f"/{i}/" in mounts]
        for id_ in ids:
            left += cgroup_dirs_named(id_)
        parents = {os.getpid()} | ({self.proc.pid} if self.proc else set())
        left += [f"zombie {z}" for z in zombies_of(parents)]
        return left

    @contextlib.asynccontextmanager
    async def client(self) -> AsyncIterator[TasksStub]:
        channel = Channel(path=self.socket)
        try:
            yield TasksStub(channel)
        finally:
            channel.close()


class Bundles:
    """Bundles whose config.json points at one shared read-only busybox rootfs: cheap by the 50."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.rootfs = build_rootfs(folder / "rootfs")

    def make(self, name: str, args: list[str], *, terminal: bool = False,
             edit: Callable[[dict[str, Any]], None] | None = None) -> Path:
        bundle = self.folder / name
        bundle.mkdir(parents=True, exist_ok=True)
        spec = default_spec(args, terminal=terminal)
        spec["root"] = {"path": str(self.rootfs), "readonly": True}
        if edit:
            edit(spec)
        (bundle / "config.json").write_text(json.dumps(spec))
        return bundle


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def remove_containers_and_processes(paths: Paths, runtime: str, prefix: Path) -> None:
    """Every container highlevel's runtime state knows, deleted by force; then any process that
    still names the prefix on its command line, killed. Used by teardowns even after a failure."""
    state_root = paths.highlevel_run / "runtime-state"
    if state_root.is_dir():
        argv = resolve_runtime(runtime)
        for entry in state_root.iterdir():
            subprocess.run([*argv, "--root", str(state_root), "delete", "--force", entry.name],
                           capture_output=True, timeout=30)
    for pid in processes_mentioning(str(prefix)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
