"""Address management per network, persisted so an address is never handed out twice, even across restarts.

One JSON file per network (``<folder>/<network id>.json``), rewritten atomically (tmp, fsync, rename).
Each network has its own lock: a thread lock for this process and an ``flock`` on ``<id>.lock`` so a
second daemon (or a test next to it) on the same folder cannot interleave; networks never wait on
each other.

A pool holds IPv4 always and IPv6 beside it for a network created with ``--ipv6`` (dockerd allocates an
IPv4 subnet even when only an IPv6 one is given). Each family may have an ``IPRange`` (automatic
addresses come from there) and auxiliary addresses (reserved, never handed out), as IPAM.Config says.

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


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


@dataclass(slots=True)
class Range:
    """One address family of a pool: its subnet, gateway, the range handed out from, reserved and taken addresses."""

    subnet: IPNetwork
    gateway: IPAddress
    ip_range: IPNetwork | None = None  # IPAM.Config IPRange: automatic addresses come from here only
    aux: dict[str, str] = field(default_factory=dict)  # AuxiliaryAddresses: name -> address, never handed out
    allocations: dict[str, str] = field(default_factory=dict)  # address -> owner (container id)

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "subnet": str(self.subnet),
            "gateway": str(self.gateway),
            "allocations": dict(sorted(self.allocations.items())),
        }
        if self.ip_range is not None:
            out["ip_range"] = str(self.ip_range)
        if self.aux:
            out["aux"] = dict(self.aux)
        return out

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Range:
        ip_range = data.get("ip_range")
        return cls(
            subnet=ipaddress.ip_network(str(data["subnet"])),
            gateway=ipaddress.ip_address(str(data["gateway"])),
            ip_range=ipaddress.ip_network(str(ip_range)) if ip_range else None,
            aux={str(k): str(v) for k, v in dict(data.get("aux") or {}).items()},  # type: ignore[call-overload]
            allocations={str(k): str(v) for k, v in dict(data.get("allocations") or {}).items()},  # type: ignore[call-overload]
        )

    def interface(self, address: str) -> IPInterface:
        return ipaddress.ip_interface(f"{address}/{self.subnet.prefixlen}")

    def reserved(self, address: IPAddress) -> bool:
        """Never handed out: the subnet's own address, its broadcast (IPv4), the gateway, an auxiliary address."""
        special = {self.subnet.network_address, self.gateway}
        if self.subnet.version == 4:
            special.add(self.subnet.broadcast_address)
        return address in special or str(address) in self.aux.values()

    def candidates(self) -> Iterator[IPAddress]:
        """Addresses in hand-out order: the range's (or the subnet's) from the lowest."""
        return iter(self.ip_range if self.ip_range is not None else self.subnet)


@dataclass(frozen=True, slots=True)
class RangeSpec:
    """What a network create asks of one family (IPAM.Config): the gateway, range and aux are optional."""

    subnet: IPNetwork
    gateway: IPAddress | None = None
    ip_range: IPNetwork | None = None
    aux: tuple[tuple[str, str], ...] = ()

    def check(self) -> Range:
        """The range this spec makes, or InvalidArgument as dockerd words it."""
        subnet = self.subnet
        if subnet.prefixlen > subnet.max_prefixlen - 2:
            raise InvalidArgument(f"subnet {subnet} is too small: /{subnet.max_prefixlen - 2} at most")
        gw = self.gateway or next(subnet.hosts())
        rng = Range(subnet, gw, self.ip_range, dict(self.aux))
        if gw.version != subnet.version or gw not in subnet or gw == subnet.network_address or (
            subnet.version == 4 and gw == subnet.broadcast_address
        ):
            raise InvalidArgument(f"gateway {gw} is not a host address of {subnet}")
        if self.ip_range is not None and (
            self.ip_range.version != subnet.version or not self.ip_range.subnet_of(subnet)  # type: ignore[arg-type]
        ):
            raise InvalidArgument(f"ip range {self.ip_range} is not within subnet {subnet}")
        for name, text in self.aux:
            try:
                addr = ipaddress.ip_address(text)
            except ValueError:
                raise InvalidArgument(f"auxiliary address {name}={text} is not an IP address") from None
            if addr not in subnet:
                raise InvalidArgument(f"auxiliary address {name}={text} is not within subnet {subnet}")
        return rng


@dataclass(slots=True)
class Pool:
    """A network's addresses: IPv4 always; IPv6 beside it when the network has it."""

    network_id: str
    v4: Range
    v6: Range | None = None

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        return self.v4.subnet  # type: ignore[return-value]

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        return self.v4.gateway  # type: ignore[return-value]

    @property
    def allocations(self) -> dict[str, str]:
        return self.v4.allocations

    def ranges(self) -> list[Range]:
        return [self.v4] if self.v6 is None else [self.v4, self.v6]

    def family(self, version: int) -> Range:
        rng = self.v4 if version == 4 else self.v6
        if rng is None:
            raise InvalidArgument(f"network {self.network_id} has no IPv6 subnet")
        return rng

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"network_id": self.network_id, **self.v4.to_json()}
        if self.v6 is not None:
            out["ipv6"] = self.v6.to_json()
        return out

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Pool:
        v6 = data.get("ipv6")
        return cls(
            network_id=str(data["network_id"]),
            v4=Range.from_json(data),
            v6=Range.from_json(v6) if isinstance(v6, dict) else None,
        )

    def interface(self, address: str) -> IPInterface:
        return self.family(ipaddress.ip_address(address).version).interface(address)


def _write_atomic(path: Path, data: dict[str, object]) -> None:
    # sync_dir: an address handed out must stay handed out after a power cut.
    atomic_write(path, json.dumps(data, indent=1).encode(), sync_dir=True)


class Ipam:
    """Pools in ``folder``; every call reads the file under the lock, so the disk is the only truth."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        # The temp file of a daemon killed inside atomic_write (``.<id>.json.<pid>.tmp``, found by skiff
        # soak): its writer is gone, nothing reads it.
        for stale in self.folder.glob(".*.json.*.tmp"):
            pid = stale.name.rsplit(".", 2)[-2]
            if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                stale.unlink(missing_ok=True)
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
        self,
        network_id: str,
        subnet: ipaddress.IPv4Network,
        gateway: ipaddress.IPv4Address | None = None,
        *,
        ip_range: ipaddress.IPv4Network | None = None,
        aux: tuple[tuple[str, str], ...] = (),
        v6: RangeSpec | None = None,
    ) -> Pool:
        if subnet.version != 4:
            raise InvalidArgument(f"subnet {subnet} is not an IPv4 subnet")
        pool = Pool(network_id, RangeSpec(subnet, gateway, ip_range, aux).check(), v6.check() if v6 else None)
        if pool.v6 is not None and pool.v6.subnet.version != 6:
            raise InvalidArgument(f"subnet {pool.v6.subnet} is not an IPv6 subnet")
        for other in self.pools():
            if other.network_id == network_id:
                continue
            for mine in pool.ranges():
                for theirs in other.ranges():
                    if mine.subnet.version == theirs.subnet.version and mine.subnet.overlaps(theirs.subnet):  # type: ignore[arg-type]
                        raise Conflict(
                            f"subnet {mine.subnet} overlaps {theirs.subnet} of network {other.network_id}"
                        )
        with self._locked(network_id):
            path = self._path(network_id)
            if path.exists():
                raise AlreadyExists(f"network {network_id} already has an address pool")
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
        self, network_id: str, owner: str, address: IPAddress | None = None, *, version: int = 4
    ) -> IPInterface:
        """An address of family ``version`` for ``owner`` (its existing one if it has one); ``address`` is ``--ip``."""
        if address is not None:
            version = address.version
        with self._locked(network_id):
            pool = self._load(network_id)
            rng = pool.family(version)
            for addr, who in rng.allocations.items():
                if who == owner and (address is None or str(address) == addr):
                    return rng.interface(addr)
            if address is not None:
                if address not in rng.subnet or rng.reserved(address):
                    raise InvalidArgument(f"address {address} is not a free host address of {rng.subnet}")
                if str(address) in rng.allocations:
                    raise Conflict(f"address {address} is already in use on network {network_id}")
                chosen = str(address)
            else:
                chosen = ""
                for host in rng.candidates():
                    text = str(host)
                    if text not in rng.allocations and not rng.reserved(host):
                        chosen = text
                        break
                if not chosen:
                    raise Unavailable(f"no free address left in {rng.ip_range or rng.subnet} on network {network_id}")
            rng.allocations[chosen] = owner
            _write_atomic(self._path(network_id), pool.to_json())
            return rng.interface(chosen)

    def release(self, network_id: str, owner: str) -> list[str]:
        """Free every address ``owner`` holds on the network; returns them. Idempotent."""
        with self._locked(network_id):
            try:
                pool = self._load(network_id)
            except NotFound:
                return []
            freed = []
            for rng in pool.ranges():
                mine = [a for a, who in rng.allocations.items() if who == owner]
                for a in mine:
                    del rng.allocations[a]
                freed += mine
            if freed:
                _write_atomic(self._path(network_id), pool.to_json())
            return freed

    def release_all_except(self, live_owners: Iterable[str]) -> dict[str, list[str]]:
        """Reconciliation: free every address whose owner is not in ``live_owners``."""
        live = set(live_owners)
        freed: dict[str, list[str]] = {}
        for pool in self.pools():
            owners = {o for rng in pool.ranges() for o in rng.allocations.values()}
            for owner in owners - live:
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
    busy = [*host_networks(), *(t for t in taken if t.version == 4)]
    for text in candidates:
        net = ipaddress.IPv4Network(text)
        if not any(net.overlaps(b) for b in busy):
            return net
    raise Unavailable("no free subnet left among the default candidates; give one explicitly")
