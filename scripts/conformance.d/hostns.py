"""The private corner of the host one engine runs in: a network namespace, mounts, cgroups, processes.

Each engine of a conformance run lives in a network namespace of its own (pinned by a bind mount
inside the run's temp root), so its bridge, veths, iptables rules and published ports never meet
anything else on the machine; taking the namespace away takes all of them. Its containers go under
a cgroup parent of its own name, and every file it writes under its root. ``sweep`` ends whatever is
left of an engine by those three marks only, never by a process's name.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import secrets
import signal
import time
from collections.abc import Callable
from pathlib import Path

CLONE_NEWNET = 0x40000000
MS_BIND = 4096
MNT_DETACH = 2
CGROUP_ROOT = Path("/sys/fs/cgroup")

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def umount_detach(path: str) -> None:
    _check(_libc.umount2(path.encode(), MNT_DETACH), f"umount2 {path}")


class NetNamespace:
    """A new network namespace, pinned at ``path`` (an empty file, bind-mounted over by nsfs)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def create(cls, path: Path) -> NetNamespace:
        path.touch()
        pid = os.fork()
        if pid == 0:  # the child: a namespace of its own, pinned before it exits
            code = 1
            try:
                _check(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
                _check(_libc.mount(b"/proc/self/ns/net", str(path).encode(), None, MS_BIND, None), "bind nsfs")
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise OSError(f"could not make a network namespace at {path}")
        ns = cls(path)
        ns.run(_loopback_up)
        return ns

    def enter(self) -> None:
        """setns into it (a forked child's preexec_fn, before exec)."""
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _check(_libc.setns(fd, CLONE_NEWNET), f"setns {self.path}")
        finally:
            os.close(fd)

    def run(self, fn: Callable[[], None]) -> None:
        """``fn`` in a forked child inside the namespace (netlink work without moving this process)."""
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                self.enter()
                fn()
                code = 0
            except BaseException as exc:  # noqa: BLE001 - reported through the exit status
                os.write(2, f"conformance: in {self.path}: {exc!r}\n".encode())
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise OSError(f"a step inside {self.path} failed")

    def inode(self) -> int | None:
        try:
            return os.stat(self.path).st_ino
        except OSError:
            return None

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            umount_detach(str(self.path))
        with contextlib.suppress(OSError):
            self.path.unlink()


def _loopback_up() -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ip:
        ip.link("set", index=ip.link_lookup(ifname="lo")[0], state="up")


def make_bridge(name: str, subnet: ipaddress.IPv4Network) -> Callable[[], None]:
    """A step for ``NetNamespace.run``: bridge ``name`` up with the subnet's first address."""

    def step() -> None:
        from pyroute2 import IPRoute

        with IPRoute() as ip:
            ip.link("add", ifname=name, kind="bridge")
            index = ip.link_lookup(ifname=name)[0]
            ip.addr("add", index=index, address=str(next(subnet.hosts())), prefixlen=subnet.prefixlen)
            ip.link("set", index=index, state="up")

    return step


def private_subnet() -> ipaddress.IPv4Network:
    """A 10.x /24 not routed on the host (the engines' namespaces are private; this keeps logs unambiguous)."""
    from pyroute2 import IPRoute

    with IPRoute() as ip:
        busy = [ipaddress.ip_network(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}", strict=False)
                for a in ip.get_addr(family=2)]
    for _ in range(500):
        candidate = ipaddress.IPv4Network(f"10.{150 + secrets.randbelow(50)}.{secrets.randbelow(256)}.0/24")
        if not any(candidate.overlaps(b) for b in busy):
            return candidate
    raise OSError("no free 10.x subnet")


# ---- finding and ending what an engine left behind ---------------------------------------------------

def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _printable(cmdline: bytes) -> str:
    return cmdline.replace(b"\0", b" ").decode(errors="replace")[:200]


def cgroup_dirs(parent: str) -> list[Path]:
    """Every folder of the cgroup parent ``parent`` in every hierarchy, deepest first."""
    found: list[Path] = []
    for hierarchy in CGROUP_ROOT.iterdir() if CGROUP_ROOT.is_dir() else []:
        top = hierarchy / parent.strip("/")
        if top.is_dir():
            for folder, _dirs, _files in os.walk(top, topdown=False):
                found.append(Path(folder))
    return found


def owned_processes(root: Path, ns: NetNamespace | None, cgroup_parent: str) -> set[int]:
    """Processes of the engine: in its namespace, in its cgroup parent, or naming its root."""
    me = os.getpid()
    marker = str(root).encode()
    inode = ns.inode() if ns is not None else None
    pids: set[int] = set()
    for pid in _pids():
        if pid == me:
            continue
        if marker in _cmdline(pid):
            pids.add(pid)
            continue
        if inode is not None:
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{pid}/ns/net").st_ino == inode:
                    pids.add(pid)
    for folder in cgroup_dirs(cgroup_parent):
        with contextlib.suppress(OSError, ValueError):
            pids.update(int(p) for p in (folder / "cgroup.procs").read_text().split())
    pids.discard(me)
    return pids


def mounts_under(root: Path) -> list[str]:
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if point == str(root) or point.startswith(str(root) + "/"):
            mounts.append(point)
    return mounts


def survey(root: Path, ns: NetNamespace | None, cgroup_parent: str) -> list[str]:
    """What a stopped engine left on the host by itself, before ``sweep`` ends it: its processes (by
    its root, namespace or cgroup parent), mounts under its root (not the namespace's pin, ours), and
    cgroups below its cgroup parent (not the parent itself: runc and Skiff remove a container's own
    cgroup only, so the parent stays after dockerd too)."""
    pin = str(ns.path) if ns is not None else None
    top = {str(CGROUP_ROOT / h.name / cgroup_parent.strip("/")) for h in CGROUP_ROOT.iterdir()} \
        if CGROUP_ROOT.is_dir() else set()
    left = [f"process {p}: {_printable(_cmdline(p))}" for p in sorted(owned_processes(root, ns, cgroup_parent))]
    left += [f"mount {m}" for m in mounts_under(root) if m != pin]
    left += [f"cgroup {c}" for c in cgroup_dirs(cgroup_parent) if str(c) not in top]
    return left


def sweep(root: Path, ns: NetNamespace | None, cgroup_parent: str, deadline: float = 20.0) -> list[str]:
    """SIGKILL the engine's processes, unmount its mounts, remove its cgroups and its namespace.

    Returns what could not be removed (empty when the host is as it was)."""
    end = time.monotonic() + deadline
    while True:
        pids = owned_processes(root, ns, cgroup_parent)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        # A frozen cgroup holds its killed processes: thaw it (v1 freezer) so they can die.
        for folder in cgroup_dirs(cgroup_parent):
            state = folder / "freezer.state"
            if state.exists():
                with contextlib.suppress(OSError):
                    state.write_text("THAWED")
        if not pids or time.monotonic() > end:
            break
        time.sleep(0.1)
    for point in reversed(mounts_under(root)):
        if ns is not None and point == str(ns.path):
            continue
        with contextlib.suppress(OSError):
            umount_detach(point)
    for folder in cgroup_dirs(cgroup_parent):
        with contextlib.suppress(OSError):
            folder.rmdir()
    if ns is not None:
        ns.remove()
    left = [f"process {p}: {_printable(_cmdline(p))}" for p in owned_processes(root, None, cgroup_parent)]
    left += [f"mount {m}" for m in mounts_under(root)]
    left += [f"cgroup {c}" for c in cgroup_dirs(cgroup_parent)]
    return left
