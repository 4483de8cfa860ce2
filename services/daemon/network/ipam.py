"""Address management per network, persisted so an address is never handed out twice, even across restarts.

One JSON file per network (``<folder>/<network id>.json``), rewritten atomically (tmp, fsync, rename).
Each network has its own lock: a thread lock for this process and an ``flock`` on ``<id>.lock`` so a
second daemon (or a test next to it) on the same folder cannot interleave; networks never wait on
each other.

Default subnet choice: the first of 172.17.0.0/16 … 172.31.0.0/16, then 10.88.0.0/16 … 10.99.0.0/16,
that overlaps no route and no address on the host (read over netlink), and never 172.17.0.0/16 while a
``docker0`` device exists even if it is down and unrouted — Docker will come back and take it.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pyroute2 import IPRoute

from services.common.atomic import atomic_write
from services.common.errors import AlreadyExists, Conflict, InvalidArgument, NotFound, Unavailable

DEFAULT_CANDIDATES: tuple[str, ...] = tuple(f"172.{n}.0.0/16" for n in range(17, 32)) + tuple(
    f"10.{n}.0.0/16" for n in range(88, 100)
)


@dataclass(slots=True)
class Pool:
    network_id: str
    subnet: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address
    allocations: dict[str, str] = field(default_factory=dict)  # address -> owner (container id)

    def to_json(self) -> dict[str, object]:
        return {
            "network_id": self.network_id,
            "subnet": str(self.subnet),
            "gateway": str(self.gateway),
            "allocations": dict(sorted(self.allocations.items())),
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Pool:
        return cls(
            network_id=str(data["network_id"]),
            subnet=ipaddress.IPv4Network(str(data["subnet"])),
            gateway=ipaddress.IPv4Address(str(data["gateway"])),
            allocations={str(k): str(v) for k, v in dict(data.get("allocations") or {}).items()},  # type: ignore[call-overload]
        )

    def interface(self, address: str) -> ipaddress.IPv4Interface:
        return ipaddress.IPv4Interface(f"{address}/{self.subnet.prefixlen}")


def _write_atomic(path: Path, data: dict[str, object]) -> None:
    # sync_dir: an address handed out must stay handed out after a power cut.
    atomic_write(path, json.dumps(data, indent=1).encode(), sync_dir=True)


class Ipam:
    """Pools in ``folder``; every call reads the file under the lock, so the disk is the only truth."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def _path(self, network_id: str) -> Path:
        if not network_id or "/" in network_id or network_id.startswith("."):
            raise InvalidArgument(f"network id `{network_id}` is not valid")
        return self.folder / f"{network_id}.json"

    @contextlib.contextmanager
    def _locked(self, network_id: str) -> Iterator[None]:
        with self._locks_guard:
            lock = self._locks.setdefault(network_id, threading.Lock())
        with lock:
            fd = os.open(self.folder / f"{network_id}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # closing drops the flock

    def _load(self, network_id: str) -> Pool:
        try:
            return Pool.from_json(json.loads(self._path(network_id).read_text()))
        except FileNotFoundError:
            raise NotFound(f"network {network_id} has no address pool") from None

    # ---- pools ----------------------------------------------------------------------------------
    def create_pool(
        self, network_id: str, subnet: ipaddress.IPv4Network, gateway: ipaddress.IPv4Address | None = None
    ) -> Pool:
        if subnet.prefixlen > 30:
            raise InvalidArgument(f"subnet {subnet} is too small: /30 at most")
        gw = gateway or next(subnet.hosts())
        if gw not in subnet or gw in (subnet.network_address, subnet.broadcast_address):
            raise InvalidArgument(f"gateway {gw} is not a host address of {subnet}")
        for other in self.pools():
            if other.network_id != network_id and other.subnet.overlaps(subnet):
                raise Conflict(f"subnet {subnet} overlaps {other.subnet} of network {other.network_id}")
        with self._locked(network_id):
            path = self._path(network_id)
            if path.exists():
                raise AlreadyExists(f"network {network_id} already has an address pool")
            pool = Pool(network_id, subnet, gw)
            _write_atomic(path, pool.to_json())
            return pool

    def get_pool(self, network_id: str) -> Pool:
        with self._locked(network_id):
            return self._load(network_id)

    def pools(self) -> list[Pool]:
        found = []
        for path in sorted(self.folder.glob("*.json")):
            with contextlib.suppress(FileNotFoundError, NotFound):
                found.append(self.get_pool(path.stem))
        return found

    def remove_pool(self, network_id: str) -> None:
        with self._locked(network_id), contextlib.suppress(FileNotFoundError):
            self._path(network_id).unlink()
        with contextlib.suppress(FileNotFoundError):
            (self.folder / f"{network_id}.lock").unlink()

    # ---- addresses ------------------------------------------------------------------------------
    def allocate(
        self, network_id: str, owner: str, address: ipaddress.IPv4Address | None = None
    ) -> ipaddress.IPv4Interface:
        """An address for ``owner`` (its existing one if it has one); ``address`` is ``--ip``."""
        with self._locked(network_id):
            pool = self._load(network_id)
            for addr, who in pool.allocations.items():
                if who == owner and (address is None or str(address) == addr):
                    return pool.interface(addr)
            if address is not None:
                if address not in pool.subnet or address in (
                    pool.subnet.network_address,
                    pool.subnet.broadcast_address,
                    pool.gateway,
                ):
                    raise InvalidArgument(f"address {address} is not a free host address of {pool.subnet}")
                if str(address) in pool.allocations:
                    raise Conflict(f"address {address} is already in use on network {network_id}")
                chosen = str(address)
            else:
                chosen = ""
                for host in pool.subnet.hosts():
                    text = str(host)
                    if host != pool.gateway and text not in pool.allocations:
                        chosen = text
                        break
                if not chosen:
                    raise Unavailable(f"no free address left in {pool.subnet} on network {network_id}")
            pool.allocations[chosen] = owner
            _write_atomic(self._path(network_id), pool.to_json())
            return pool.interface(chosen)

    def release(self, network_id: str, owner: str) -> list[str]:
        """Free every address ``owner`` holds on the network; returns them. Idempotent."""
        with self._locked(network_id):
            try:
                pool = self._load(network_id)
            except NotFound:
                return []
            freed = [a for a, who in pool.allocations.items() if who == owner]
            if freed:
                for a in freed:
                    del pool.allocations[a]
                _write_atomic(self._path(network_id), pool.to_json())
            return freed

    def release_all_except(self, live_owners: Iterable[str]) -> dict[str, list[str]]:
        """Reconciliation: free every address whose owner is not in ``live_owners``."""
        live = set(live_owners)
        freed: dict[str, list[str]] = {}
        for pool in self.pools():
            for owner in {o for o in pool.allocations.values() if o not in live}:
                freed.setdefault(pool.network_id, []).extend(self.release(pool.network_id, owner))
        return freed


def host_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 range the host routes or holds an address in (all routing tables)."""
    nets: list[ipaddress.IPv4Network] = []
    with IPRoute() as ipr:
        for route in ipr.get_routes(family=2, table=0):  # table 0: every table, not only main
            dst = route.get_attr("RTA_DST")
            if dst is None or route["dst_len"] == 0:
                continue  # the default route overlaps everything and says nothing about local ranges
            nets.append(ipaddress.IPv4Network(f"{dst}/{route['dst_len']}", strict=False))
        for addr in ipr.get_addr(family=2):
            nets.append(ipaddress.IPv4Network(f"{addr.get_attr('IFA_ADDRESS')}/{addr['prefixlen']}", strict=False))
        has_docker0 = bool(ipr.link_lookup(ifname="docker0"))
    if has_docker0:
        nets.append(ipaddress.IPv4Network("172.17.0.0/16"))
    return nets


def choose_subnet(
    taken: Iterable[ipaddress.IPv4Network] = (), candidates: Iterable[str] = DEFAULT_CANDIDATES
) -> ipaddress.IPv4Network:
    """The first candidate that overlaps neither the host's ranges nor ``taken`` (other Skiff pools)."""
    busy = [*host_networks(), *taken]
    for text in candidates:
        net = ipaddress.IPv4Network(text)
        if not any(net.overlaps(b) for b in busy):
            return net
    raise Unavailable("no free subnet left among the default candidates; give one explicitly")
