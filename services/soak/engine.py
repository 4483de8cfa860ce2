"""A private Skiff engine for ``--start-engine``, which the fault injector may kill and restart.

Its three services run under a root prefix of its own, with a cgroup parent of its own, inside a
network namespace of its own (held by a small holder process): the default bridge, the veths and
the iptables rules are all private, so the soak can neither disturb the host nor be disturbed by
it, and whatever it leaked dies with the namespace once the account has looked. A service is
started as systemd starts its unit (Type=notify: ready on its ``READY=1``) and restarted the same
way after a fault, as a supervisor would.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from services.common.paths import Paths

SERVICES = ("highlevel", "daemon", "apiserver")
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
CLONE_NEWNET = 0x40000000
# The holder: its own network namespace, then it waits for its stdin to close.
_HOLDER = (
    "import ctypes, os, sys\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    f"if libc.unshare({CLONE_NEWNET}) != 0: sys.exit('unshare: ' + os.strerror(ctypes.get_errno()))\n"
    "print('ready', flush=True)\n"
    "sys.stdin.read()\n"
)


class EngineError(Exception):
    """The private engine could not start or restart a service."""


def enter_netns(path: str) -> None:
    """setns(2) into the network namespace at ``path`` (the calling thread, or a child before exec)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {path}")
    finally:
        os.close(fd)


def cgroup_parent_of(prefix: Path) -> str:
    return "skiff-soak-" + hashlib.sha256(str(prefix).encode()).hexdigest()[:10]


@dataclass(slots=True)
class Engine:
    prefix: Path
    runtime: str = "skiff-lowlevel"
    owns_prefix: bool = False  # a temporary root: removed at the end
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    restarts: dict[str, int] = field(default_factory=dict)
    holder: subprocess.Popen[bytes] | None = None

    @property
    def paths(self) -> Paths:
        return Paths(self.prefix)

    @property
    def netns_path(self) -> str:
        assert self.holder is not None
        return f"/proc/{self.holder.pid}/ns/net"

    @property
    def cgroup_parent(self) -> str:
        return cgroup_parent_of(self.prefix)

    def pid_of(self, service: str) -> int | None:
        proc = self.procs.get(service)
        return proc.pid if proc is not None and proc.poll() is None else None

    def start(self) -> None:
        self.holder = subprocess.Popen([sys.executable, "-c", _HOLDER], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE)
        assert self.holder.stdout is not None
        if self.holder.stdout.readline().strip() != b"ready":
            raise EngineError("could not make a network namespace for the engine")
        (self.prefix / "logs").mkdir(parents=True, exist_ok=True)
        for service in SERVICES:
            self.start_service(service)

    def start_service(self, service: str) -> None:
        argv = [sys.executable, "-m", f"services.{service}", "--root", str(self.prefix)]
        if service != "apiserver":
            argv += ["--runtime", self.runtime]
        # A file, not an abstract address: abstract UNIX sockets belong to a network namespace.
        address = str(self.prefix / "logs" / f"{service}.notify")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(address)
        channel = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        channel.bind(address)
        env = dict(os.environ, SKIFF_ROOT=str(self.prefix), SKIFF_CGROUP_PARENT=self.cgroup_parent,
                   NOTIFY_SOCKET=address, SKIFF_LOG_FORMAT="json")
        netns = self.netns_path
        with channel, open(self.prefix / "logs" / f"{service}.log", "ab") as log:
            proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=log,
                                    preexec_fn=lambda: enter_netns(netns), process_group=0)
            self.procs[service] = proc
            deadline = time.monotonic() + READY_TIMEOUT
            while True:
                if proc.poll() is not None:
                    raise EngineError(f"skiff-{service} exited {proc.returncode} before it was ready "
                                      f"(see {self.prefix / 'logs' / (service + '.log')})")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise EngineError(f"skiff-{service}: not ready after {READY_TIMEOUT:g} s")
                channel.settimeout(min(remaining, 0.2))
                try:
                    if b"READY=1" in channel.recv(4096).split(b"\n"):
                        return
                except TimeoutError:
                    continue

    def signal_service(self, service: str, signum: int) -> None:
        """The fault: the signal, then the process is reaped (SIGKILL after a bound for a SIGTERM)."""
        proc = self.procs[service]
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signum)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT)

    def restart(self, service: str) -> None:
        self.restarts[service] = self.restarts.get(service, 0) + 1
        self.start_service(service)

    def shim_pids(self) -> dict[str, int]:
        """Live shims by container id: ``shim.pid`` of each task folder, checked against its cmdline."""
        found = {}
        folder = self.paths.highlevel_run / "t"
        with contextlib.suppress(OSError):
            for task in folder.iterdir():
                with contextlib.suppress(OSError, ValueError):
                    pid = int((task / "shim.pid").read_text())
                    if str(task).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                        found[task.name] = pid
        return found

    def stop(self) -> list[str]:
        """Services stopped, anything of the prefix still running killed, mounts, cgroups and the
        namespace gone. Returns what had to be forced (empty when the engine left nothing)."""
        forced = []
        for service in reversed(SERVICES):
            proc = self.procs.get(service)
            if proc is not None and proc.poll() is None:
                self.signal_service(service, signal.SIGTERM)
        for pid in processes_mentioning(str(self.prefix)):
            forced.append(f"process {pid} killed")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for line in reversed(Path("/proc/self/mountinfo").read_text().splitlines()):
            point = line.split()[4]
            if point.startswith(str(self.prefix)):
                forced.append(f"mount {point} unmounted")
                libc = ctypes.CDLL(None, use_errno=True)
                libc.umount2(point.encode(), 2)  # MNT_DETACH
        # A container's processes do not name the prefix: those still in its cgroups are killed, and
        # a cgroup whose last process is still exiting is tried again for a moment (an interrupted
        # run's container cgroups stayed, empty, when the rmdir came before the exit).
        deadline = time.monotonic() + STOP_TIMEOUT
        for hierarchy in Path("/sys/fs/cgroup").iterdir():
            top = hierarchy / self.cgroup_parent
            if not top.is_dir():
                continue
            for folder in [*sorted((f for f in top.rglob("*") if f.is_dir()), key=lambda p: -len(p.parts)), top]:
                while True:
                    with contextlib.suppress(OSError, ValueError):
                        for pid in (folder / "cgroup.procs").read_text().split():
                            with contextlib.suppress(ProcessLookupError):
                                os.kill(int(pid), signal.SIGKILL)
                    try:
                        folder.rmdir()
                        break
                    except FileNotFoundError:
                        break
                    except OSError:
                        if time.monotonic() > deadline:
                            forced.append(f"cgroup {folder} left")
                            break
                        time.sleep(0.05)
        if self.holder is not None and self.holder.poll() is None:
            assert self.holder.stdin is not None
            self.holder.stdin.close()
            self.holder.wait(STOP_TIMEOUT)
        if self.owns_prefix:
            shutil.rmtree(self.prefix, ignore_errors=True)
        return forced


def ancestors() -> set[int]:
    """This process and its parents: a prefix named on our own command line is not theirs to kill."""
    found, pid = set(), os.getpid()
    while pid > 1 and pid not in found:
        found.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return found


def processes_mentioning(text: str) -> list[int]:
    found = []
    mine = ancestors()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) not in mine:
            with contextlib.suppress(OSError):
                if text.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.append(int(entry))
    return found
