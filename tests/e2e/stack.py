"""The whole stack (highlevel, daemon, apiserver as separate processes) under a temp prefix, and leak checks."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from services.common.paths import Paths, resolve_paths
from tests.e2e.netstack import cgroup_parent, cleanup_networks, network_env, remove_cgroup_parent
from tests.support.oci_image import build_image, busybox_layer, docker_save_archive
from tests.support.tasks import processes_mentioning, remove_containers_and_processes, wait_for

SERVICES = ("services.highlevel", "services.daemon", "services.apiserver")


def accepts(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


@dataclass(slots=True)
class Stack:
    prefix: Path
    runtime: str
    # None: the services run in the test's own network namespace (the default). A pinned namespace's
    # path: they run inside it (its own iptables and bridge sysctls); the sockets are files, reachable
    # from any namespace.
    netns: Path | None = None
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)

    @property
    def paths(self) -> Paths:
        return resolve_paths(self.prefix)

    @property
    def base_url(self) -> str:
        return f"unix://{self.paths.api_socket}"

    def socket_of(self, module: str) -> Path:
        return {"services.highlevel": self.paths.highlevel_socket, "services.daemon": self.paths.daemon_socket,
                "services.apiserver": self.paths.api_socket}[module]

    def start(self, module: str) -> None:
        log_path = self.prefix / f"{module.rsplit('.', 1)[1]}.log"
        self.logs[module] = log_path
        argv = [sys.executable, "-m", module, "--root", str(self.prefix)]
        if module != "services.apiserver":
            argv += ["--runtime", self.runtime]
        with open(log_path, "ab") as log:
            env = dict(os.environ, SKIFF_LOG_FORMAT="json", SKIFF_CGROUP_PARENT=cgroup_parent(self.prefix),
                       **network_env(self.prefix))
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log, env=env,
                                    preexec_fn=self._enter_netns if self.netns is not None else None)
        self.procs[module] = proc

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"{module} exited {proc.returncode}: {log_path.read_text()[-3000:]}")
            return accepts(self.socket_of(module))

        wait_for(ready, 30, f"{module} socket")

    def _enter_netns(self) -> None:
        """In the forked child, before exec: join ``self.netns``."""
        from services.daemon.network import _sys

        fd = os.open(str(self.netns), os.O_RDONLY | os.O_CLOEXEC)
        try:
            _sys.setns(fd, _sys.CLONE_NEWNET, str(self.netns))
        finally:
            os.close(fd)

    def start_all(self) -> None:
        for module in SERVICES:
            self.start(module)

    def stop(self, module: str) -> None:
        proc = self.procs.get(module)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def stop_all(self) -> None:
        for module in reversed(SERVICES):
            self.stop(module)

    def shim_pids(self) -> list[int]:
        pids = []
        folder = self.paths.highlevel_run / "t"
        if folder.is_dir():
            for state in folder.iterdir():
                with contextlib.suppress(OSError, ValueError):
                    pid = int((state / "shim.pid").read_text())
                    # Only a live shim of this folder: a gone shim's pid may belong to anything now.
                    if str(state).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                        pids.append(pid)
        return pids

    def force_cleanup(self) -> None:
        """After a failure: nothing of this prefix may outlive the test (shims, containers, mounts)."""
        for module in SERVICES:
            proc = self.procs.get(module)
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)
        for pid in self.shim_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        remove_containers_and_processes(self.paths, self.runtime, self.prefix)
        if self.netns is not None:
            from services.daemon.network.netns import run_in_netns

            run_in_netns(self.netns, lambda: cleanup_networks(self.paths))
        else:
            cleanup_networks(self.paths)
        remove_cgroup_parent(self.prefix)
        for line in reversed(Path("/proc/self/mountinfo").read_text().splitlines()):
            mount_point = line.split()[4]
            if mount_point.startswith(str(self.prefix)):
                subprocess.run(["umount", "-l", mount_point], capture_output=True, timeout=10)

    def leftovers(self, ids: list[str]) -> list[str]:
        # highlevel stops its shim zygote on a clean stop: anything still running here is a leak.
        left = [f"process {p}: {_cmdline(p)}" for p in processes_mentioning(str(self.prefix))]
        left += [f"shim {p}" for p in self.shim_pids()]
        mounts = Path("/proc/self/mountinfo").read_text()
        left += [f"mount {line.split()[4]}" for line in mounts.splitlines() if str(self.prefix) in line]
        left += [f"cgroup {found}" for found in cgroups_named(ids)]
        left += [f"cgroup {folder}" for folder in remove_cgroup_parent(self.prefix)]
        return left


def cgroups_named(parts: list[str]) -> list[str]:
    """Cgroup folders whose name holds one of ``parts``, in one walk of every hierarchy.

    os.walk skips a folder that goes while it walks (another test's cgroups are removed meanwhile;
    Path.rglob raised FileNotFoundError for them).
    """
    if not parts:
        return []
    found = []
    for top, folders, _ in os.walk("/sys/fs/cgroup"):
        found += [os.path.join(top, name) for name in folders if any(part in name for part in parts)]
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "?"


def busybox_archive(workdir: Path, tag: str = "busybox:latest") -> Path:
    """A ``docker save`` archive (the legacy layout) of an image built from busybox-static."""
    image = build_image([busybox_layer(workdir)], cmd=["sh"])
    return docker_save_archive(image, tag, workdir / "busybox.tar")
