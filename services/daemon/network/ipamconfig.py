"""A network's address plan as Docker asks for it (IPAM.Config, EnableIPv6) and shows it back.

``parse`` checks a create request the way dockerd's validateIpamConfig does: subnets must be given in
their canonical form, gateways, ranges and auxiliary addresses must lie within their subnet, and an
IPv6 entry counts only when IPv6 is enabled. ``make_pool`` turns the plan into the network's pool:
without an IPv4 subnet one is chosen (for the default bridge, the address its device already has is
adopted, as dockerd does with docker0); IPv6 enabled without a subnet gets a random /64 of the unique
local range fd00::/8. ``shown`` is IPAM.Config as dockerd renders it: the configured entries with the
chosen subnet and gateway filled in, then the automatic ones.

Endpoint requests (``EndpointConfig``) are checked here too: ``--ip``/``--ip6``, link-local addresses and
``--mac-address``.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from services.common.daemon_config import LiveConfig, subnet_candidates
from services.common.errors import InvalidArgument
from services.daemon.network import bridge
from services.daemon.network.ipam import (
    DEFAULT_CANDIDATES,
    IPAddress,
    Ipam,
    IPNetwork,
    Pool,
    RangeSpec,
    choose_subnet,
)
from services.gen.skiff.daemon.v1 import CreateNetworkRequest, EndpointConfig, IpamPool, Network

ULA = ipaddress.IPv6Network("fd00::/8")
MAC_RE = re.compile(r"^[0-9a-fA-F]{2}([:-][0-9a-fA-F]{2}){5}$")


@dataclass(frozen=True, slots=True)
class IpamRequest:
    v4: RangeSpec | None = None  # None: a subnet is chosen
    v6: RangeSpec | None = None  # None with enable_ipv6: a random ULA /64
    enable_ipv6: bool = False
    configured: tuple[int, ...] = ()  # families in the order the request listed them (IPAM.Config order)


def _network(text: str) -> IPNetwork:
    try:
        if "/" not in text:
            raise ValueError(text)
        iface = ipaddress.ip_interface(text)
    except ValueError:
        raise InvalidArgument(f"invalid network config:\ninvalid subnet {text}") from None
    if iface.ip != iface.network.network_address:
        raise InvalidArgument(f"invalid network config:\ninvalid subnet {text}: it should be {iface.network}")
    return iface.network


def _address(text: str, subnet: IPNetwork, what: str) -> IPAddress:
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise InvalidArgument(f"invalid network config:\ninvalid {what} {text}: not an IP address") from None
    if addr.version != subnet.version or addr not in subnet:
        raise InvalidArgument(f"invalid network config:\ninvalid {what} {text}: it is not in subnet {subnet}")
    return addr


def _spec(entry: IpamPool) -> RangeSpec:
    subnet = _network(entry.subnet)
    gateway = _address(entry.gateway, subnet, "gateway") if entry.gateway else None
    ip_range = None
    if entry.ip_range:
        ip_range = _network(entry.ip_range)
        if ip_range.version != subnet.version or not ip_range.subnet_of(subnet):  # type: ignore[arg-type]
            raise InvalidArgument(
                f"invalid network config:\ninvalid ip-range {entry.ip_range}: it must be within {subnet}"
            )
    aux = tuple(
        (name, str(_address(text, subnet, "auxiliary address"))) for name, text in sorted(entry.aux_addresses.items())
    )
    return RangeSpec(subnet, gateway, ip_range, aux)


def parse(r: CreateNetworkRequest, ipam_driver: str = "") -> IpamRequest:
    if ipam_driver not in ("", "default"):
        raise InvalidArgument(f"IPAM driver {ipam_driver} is not supported (default only)")
    entries = list(r.ipam) or ([IpamPool(subnet=r.subnet, gateway=r.gateway)] if r.subnet else [])
    found: dict[int, RangeSpec] = {}
    order: list[int] = []
    for entry in entries:
        if not entry.subnet:
            raise InvalidArgument("invalid network config:\nan IPAM.Config entry needs a Subnet")
        spec = _spec(entry)
        version = spec.subnet.version
        if version == 6 and not r.enable_ipv6:
            continue  # dockerd ignores IPv6 entries of a network without IPv6
        if version in found:
            raise InvalidArgument(f"only one IPv{version} subnet per network is supported, got {entry.subnet} too")
        found[version] = spec
        order.append(version)
    return IpamRequest(found.get(4), found.get(6), r.enable_ipv6, tuple(order))


def of_record(net: Network) -> IpamRequest:
    """The plan a network was made with (to make its pool again if the pool file is gone)."""
    v4 = RangeSpec(ipaddress.IPv4Network(net.subnet), ipaddress.IPv4Address(net.gateway)) if net.subnet else None
    v6 = RangeSpec(ipaddress.IPv6Network(net.subnet6), ipaddress.IPv6Address(net.gateway6)) if net.subnet6 else None
    return IpamRequest(v4, v6, net.enable_ipv6)


def random_ula(taken: Iterable[IPNetwork]) -> ipaddress.IPv6Network:
    busy = [t for t in taken if t.version == 6]
    for _ in range(16):
        candidate = ipaddress.IPv6Network((int(ULA.network_address) | secrets.randbits(56) << 64, 64))
        if not any(candidate.overlaps(b) for b in busy):  # type: ignore[arg-type]
            return candidate
    raise InvalidArgument("no free IPv6 subnet found in fd00::/8; give one with --subnet")


def make_pool(ipam: Ipam, net: Network, want: IpamRequest, taken: list[Pool], adopt_device: bool = False,
              settings: LiveConfig | None = None) -> Pool:
    """Create the network's pool as planned (blocking: netlink and files); a subnet not given comes from
    daemon.json's default-address-pools (``settings``), else from the built-in list."""
    candidates = subnet_candidates(settings.current) if settings is not None else ()
    v4 = want.v4
    if v4 is None and adopt_device:
        found = bridge.existing_ipv4(net.bridge)
        if found is not None:
            v4 = RangeSpec(found.network, found.ip)
    if v4 is None:
        v4 = RangeSpec(choose_subnet(taken=[r.subnet for p in taken for r in p.ranges()],
                                     candidates=candidates or DEFAULT_CANDIDATES))
    v6 = want.v6
    if v6 is None and want.enable_ipv6:
        v6 = RangeSpec(random_ula(r.subnet for p in taken for r in p.ranges()))
    return ipam.create_pool(
        net.id, v4.subnet, v4.gateway, ip_range=v4.ip_range, aux=v4.aux, v6=v6  # type: ignore[arg-type]
    )


def shown(want: IpamRequest, pool: Pool) -> list[IpamPool]:
    """IPAM.Config as dockerd renders it: configured entries first (chosen values filled in), then automatic."""
    out = []
    families = list(want.configured) + [v for v in (4, 6) if v not in want.configured]
    for version in families:
        rng = pool.v4 if version == 4 else pool.v6
        if rng is None:
            continue
        out.append(
            IpamPool(
                subnet=str(rng.subnet),
                ip_range=str(rng.ip_range) if rng.ip_range is not None else "",
                gateway=str(rng.gateway),
                aux_addresses=dict(rng.aux),
            )
        )
    return out


def describe(net: Network, want: IpamRequest, pool: Pool) -> None:
    """The network record's address fields from its pool."""
    net.subnet, net.gateway = str(pool.subnet), str(pool.gateway)
    net.enable_ipv6 = pool.v6 is not None
    net.subnet6 = str(pool.v6.subnet) if pool.v6 is not None else ""
    net.gateway6 = str(pool.v6.gateway) if pool.v6 is not None else ""
    if not net.ipam:
        net.ipam = shown(want, pool)


@dataclass(frozen=True, slots=True)
class EndpointRequest:
    """An EndpointConfig checked against its network."""

    ipv4: ipaddress.IPv4Address | None
    ipv6: ipaddress.IPv6Address | None
    link_local: tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, ...]
    mac: str


def endpoint_request(cfg: EndpointConfig, net: Network) -> EndpointRequest:
    try:
        ipv4 = ipaddress.IPv4Address(cfg.ipv4_address) if cfg.ipv4_address else None
    except ValueError:
        raise InvalidArgument(f"invalid IPv4 address: {cfg.ipv4_address}") from None
    try:
        ipv6 = ipaddress.IPv6Address(cfg.ipv6_address) if cfg.ipv6_address else None
    except ValueError:
        raise InvalidArgument(f"invalid IPv6 address: {cfg.ipv6_address}") from None
    if (ipv4 is not None or ipv6 is not None) and net.name == "bridge":
        raise InvalidArgument("user specified IP address is supported on user defined networks only")
    if ipv6 is not None and not net.subnet6:
        raise InvalidArgument(f"invalid IPv6 address: {ipv6}: network {net.name} has no IPv6 subnet")
    link_local = []
    for text in cfg.link_local_ips:
        try:
            addr = ipaddress.ip_address(text)
        except ValueError:
            raise InvalidArgument(f"invalid link-local IP address: {text}") from None
        if not addr.is_link_local:
            raise InvalidArgument(f"invalid link-local IP address: {text}: it is not link-local")
        link_local.append(ipaddress.ip_interface(f"{addr}/{16 if addr.version == 4 else 64}"))
    if cfg.mac_address and not MAC_RE.match(cfg.mac_address):
        raise InvalidArgument(f"invalid MAC address: {cfg.mac_address}")
    mac = cfg.mac_address.replace("-", ":").lower()
    if mac and int(mac[:2], 16) & 1:
        raise InvalidArgument(f"invalid MAC address: {cfg.mac_address}: a multicast address")
    return EndpointRequest(ipv4, ipv6, tuple(link_local), mac)
