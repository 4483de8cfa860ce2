"""Networking of one test stack: its own default bridge and subnet, and everything of it removed afterwards."""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
from pathlib import Path

from services.common.paths import Paths


def network_env(prefix: Path) -> dict[str, str]:
    """``SKIFF_BRIDGE_NAME`` and ``SKIFF_DEFAULT_SUBNET`` unique to the stack (never skiff0, never 172.17/16)."""
    from services.daemon.network.ipam import host_networks

    marker = prefix / ".netenv"
    if marker.exists():
        name, subnet = marker.read_text().split()
        return {"SKIFF_BRIDGE_NAME": name, "SKIFF_DEFAULT_SUBNET": subnet}
    name = "skt" + hashlib.sha256(str(prefix).encode()).hexdigest()[:10]
    busy = host_networks()
    for _ in range(200):
        candidate = ipaddress.IPv4Network(f"10.{200 + secrets.randbelow(50)}.{secrets.randbelow(256)}.0/24")
        if not any(candidate.overlaps(b) for b in busy):
            break
    else:
        raise AssertionError("no free 10.x subnet for the test stack")
    prefix.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"{name} {candidate}")
    return {"SKIFF_BRIDGE_NAME": name, "SKIFF_DEFAULT_SUBNET": str(candidate)}


def cgroup_parent(prefix: Path) -> str:
    """The stack's own cgroup parent (the daemon's SKIFF_CGROUP_PARENT), removed at teardown."""
    return "skiff-e2e-" + hashlib.sha256(str(prefix).encode()).hexdigest()[:10]


def remove_cgroup_parent(prefix: Path) -> list[str]:
    """rmdir the parent in every hierarchy; returns the folders that could not go (still in use)."""
    left = []
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        folder = hierarchy / cgroup_parent(prefix)
        if folder.is_dir():
            try:
                folder.rmdir()
            except OSError:
                left.append(str(folder))
    return left


def cleanup_networks(paths: Paths) -> None:
    """Every bridge, veth, netns, address and rule of this stack's daemon: gone (the daemon is stopped)."""
    from services.daemon.network.ipam import Ipam
    from services.daemon.network.reconcile import reconcile_sync

    folder = paths.daemon_lib / "network" / "ipam"
    if folder.is_dir() or paths.netns.is_dir():
        reconcile_sync(live_containers=set(), netns_dir=paths.netns, ipam=Ipam(folder), live_networks=set())
