"""What an engine holds on the host, looked at before the soak and after everything was removed:
the difference is a leak. Also the services' RSS, fds and threads sampled over time.

The baseline is taken after a warm-up launch, so state an engine makes once and keeps (its default
bridge, its IPAM files) is not taken for a leak. Network devices and iptables rules are read inside
the engine's network namespace when it has one of its own (``--start-engine``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from services.common.paths import Paths
from services.soak.account import Account
from services.soak.engine import ancestors, enter_netns

_COUNTERS = re.compile(r"\[\d+:\d+\]")
FD_SLACK = 16  # an idle service may hold a few more descriptors (a cached channel): more is a leak


@dataclass(slots=True)
class Target:
    """Where to look: an engine's prefix (None for a foreign engine: API checks only), its network
    namespace and cgroup parent when it has its own, and its services' pids."""

    prefix: Path | None
    netns_path: str | None
    cgroup_parent: str | None
    service_pids: Callable[[], dict[str, int]]


def _in_netns(netns_path: str | None, work: Callable[[], set[str]]) -> set[str]:
    if netns_path is None:
        return work()

    def entered() -> set[str]:
        enter_netns(netns_path)  # this thread only: it is thrown away after
        return work()

    with concurrent.futures.ThreadPoolExecutor(1) as once:
        return once.submit(entered).result(timeout=60)


def _links() -> set[str]:
    text = Path("/proc/thread-self/net/dev").read_text()
    return {line.split(":", 1)[0].strip() for line in text.splitlines()[2:]}


def _rules(netns_path: str | None) -> set[str]:
    try:
        done = subprocess.run(["iptables-save"], capture_output=True, text=True, timeout=30,
                              preexec_fn=(lambda: enter_netns(netns_path)) if netns_path else None)
    except (OSError, subprocess.TimeoutExpired):
        return set()
    return {_COUNTERS.sub("", line).strip() for line in done.stdout.splitlines()
            if line and not line.startswith(("#", "COMMIT"))}


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _files(root: Path) -> set[str]:
    found = set()
    for folder, dirs, names in os.walk(root):
        # A mount's contents are not files the engine left: the mount itself is reported.
        dirs[:] = [d for d in dirs if not os.path.ismount(os.path.join(folder, d))]
        for name in names + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
            found.add(os.path.relpath(os.path.join(folder, name), root.parent.parent))
    return found


def snapshot(target: Target) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    services = target.service_pids()
    if target.prefix is not None:
        paths = Paths(target.prefix)
        prefix = str(target.prefix)
        found["mounts"] = {line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
                           if line.split()[4].startswith(prefix)}
        found["netns"] = set(os.listdir(paths.netns)) if paths.netns.is_dir() else set()
        found["files"] = _files(paths.run) | _files(paths.lib)
        mine = ancestors() | set(services.values())
        processes, shims = set(), set()
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) in mine:
                continue
            with contextlib.suppress(OSError):
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
                if prefix.encode() in cmdline:
                    shown = cmdline.replace(b"\0", b" ").decode(errors="replace")[:160]
                    processes.add(f"{entry} {shown}")
                    shims.add(int(entry))
        found["processes"] = processes
        parents = set(services.values()) | shims
        zombies = set()
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    fields = _stat(int(entry))
                    if fields[0] == "Z" and int(fields[1]) in parents:
                        zombies.add(f"{entry} (zombie child of {fields[1]})")
        found["zombies"] = zombies
    if target.cgroup_parent:
        found["cgroups"] = set()
        for hierarchy in Path("/sys/fs/cgroup").iterdir():
            top = hierarchy / target.cgroup_parent
            if top.is_dir():
                found["cgroups"] |= {str(p) for p in top.rglob("*") if p.is_dir()}
    if target.netns_path is not None or target.prefix is not None:
        found["links"] = _in_netns(target.netns_path, _links)
        found["iptables"] = _rules(target.netns_path)
    return found


def leaks(before: dict[str, set[str]], after: dict[str, set[str]]) -> dict[str, list[str]]:
    return {kind: sorted(after[kind] - before.get(kind, set())) for kind in after}


def sample(pid: int) -> tuple[int, int, int] | None:
    """(RSS bytes, open fds, threads) of a live process, None when it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    rss = int(fields.get("VmRSS", "0 kB").split()[0]) * 1024
    return rss, fds, int(fields.get("Threads", "0").strip())


async def sample_services(target: Target, account: Account, every: float, stop: asyncio.Event) -> None:
    """Every ``every`` seconds until ``stop``: each service's RSS, fds and threads into the account."""
    while not stop.is_set():
        for name, pid in target.service_pids().items():
            got = sample(pid)
            if got is not None:
                account.services.setdefault(name, []).append((round(account.now(), 2), *got))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)


def fd_counts(target: Target) -> dict[str, tuple[int, int]]:
    """Each service's pid and open fds now."""
    counts = {}
    for name, pid in target.service_pids().items():
        got = sample(pid)
        if got is not None:
            counts[name] = (pid, got[1])
    return counts


def fd_leaks(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]],
             account: Account) -> list[str]:
    """A service that was not restarted and holds more fds than at the baseline (beyond a slack)."""
    found = []
    for name, (pid, fds) in after.items():
        if name in before:
            account.service_fds[name] = (before[name][1], fds)
            if before[name][0] == pid and fds > before[name][1] + FD_SLACK:
                found.append(f"{name}: {before[name][1]} -> {fds} open fds")
    return found
