"""Bridges and veth endpoints over netlink (pyroute2): no ``ip`` subprocess.

Ownership is written on the devices themselves (``ifalias``): ``skiff-net:<network id>`` on a bridge,
``skiff-ep:<container id>:<network id>`` on an endpoint's host-side veth. Reconciliation after a crash
reads it back from the kernel, so no state file can drift from what exists.

IPv6 addresses (a network created with ``--ipv6``) are added without duplicate address detection, as
dockerd does: a tentative address could not be used for the first seconds of a container's life.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from services.common.errors import Conflict, InvalidArgument, NotFound
from services.daemon.network import netns

DEFAULT_BRIDGE = "skiff0"
DEFAULT_MTU = 1500
# The default bridge network's options as dockerd shows them (its device's name is added by the caller).
DEFAULT_BRIDGE_OPTIONS = {
    "com.docker.network.bridge.default_bridge": "true",
    "com.docker.network.bridge.enable_icc": "true",
    "com.docker.network.bridge.enable_ip_masquerade": "true",
    "com.docker.network.bridge.host_binding_ipv4": "0.0.0.0",
    "com.docker.network.driver.mtu": str(DEFAULT_MTU),
}
IFNAMSIZ_MAX = 15
BRIDGE_ALIAS = "skiff-net:"
ENDPOINT_ALIAS = "skiff-ep:"
IFA_F_NODAD = 0x02
AF_INET6 = 10


def user_bridge_name(network_id: str) -> str:
    """``skiff-<first 9 of the id>``: 15 characters, the kernel's limit for a device name."""
    return f"skiff-{network_id[:9]}"


def _check_name(name: str) -> None:
    if not name or len(name) > IFNAMSIZ_MAX or "/" in name or name.strip() != name:
        raise InvalidArgument(f"device name `{name}` is not valid (1 to {IFNAMSIZ_MAX} characters, no / or space)")


def _lookup(ipr: IPRoute, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


@dataclass(frozen=True, slots=True)
class BridgeSpec:
    name: str
    network_id: str
    gateway: ipaddress.IPv4Interface  # the bridge's own address: gateway/prefix of the subnet
    mtu: int = DEFAULT_MTU
    gateway6: ipaddress.IPv6Interface | None = None  # its IPv6 gateway address when the network has IPv6


def ensure_bridge(spec: BridgeSpec) -> int:
    """Create the bridge if missing, give it the gateway address, MTU, owner alias; bring it up. Idempotent."""
    _check_name(spec.name)
    with IPRoute() as ipr:
        index = _lookup(ipr, spec.name)
        if index is None:
            try:
                ipr.link("add", ifname=spec.name, kind="bridge")
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:  # a concurrent ensure won the race: fine
                    raise
            index = _lookup(ipr, spec.name)
            if index is None:
                raise NotFound(f"bridge {spec.name} vanished right after creation")
        ipr.link("set", index=index, mtu=spec.mtu, ifalias=f"{BRIDGE_ALIAS}{spec.network_id}")
        have = {(a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=index, family=2)}
        want = (str(spec.gateway.ip), spec.gateway.network.prefixlen)
        if want not in have:
            ipr.addr("add", index=index, address=want[0], prefixlen=want[1])
        if spec.gateway6 is not None:
            _enable_ipv6(spec.name)
            have6 = {(a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=index, family=AF_INET6)}
            want6 = (str(spec.gateway6.ip), spec.gateway6.network.prefixlen)
            if want6 not in have6:
                ipr.addr("add", index=index, address=want6[0], prefixlen=want6[1], flags=IFA_F_NODAD)
        ipr.link("set", index=index, state="up")
        return index


def _enable_ipv6(ifname: str) -> None:
    """The device's disable_ipv6 off (a host may turn IPv6 off by default for new devices)."""
    path = Path(f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6")
    if path.exists() and path.read_text().strip() != "0":
        path.write_text("0")


def existing_ipv4(name: str) -> ipaddress.IPv4Interface | None:
    """The first IPv4 address of device ``name`` if it exists and has one (dockerd adopts it for its bridge)."""
    with IPRoute() as ipr:
        index = _lookup(ipr, name)
        if index is None:
            return None
        for addr in ipr.get_addr(index=index, family=2):
            return ipaddress.IPv4Interface(f"{addr.get_attr('IFA_ADDRESS')}/{addr['prefixlen']}")
    return None


def delete_bridge(name: str) -> None:
    """Remove the bridge (its endpoints' host veths go with their own removal); idempotent."""
    with IPRoute() as ipr:
        index = _lookup(ipr, name)
        if index is not None:
            with contextlib.suppress(NetlinkError):
                ipr.link("del", index=index)


@dataclass(frozen=True, slots=True)
class Endpoint:
    container_id: str
    network_id: str
    bridge: str
    netns_path: str
    host_ifname: str  # veth<8 hex> on the host, enslaved to the bridge
    ifname: str  # eth0, eth1... inside the container
    address: ipaddress.IPv4Interface
    gateway: ipaddress.IPv4Address | None
    mac: str
    mtu: int
    address6: ipaddress.IPv6Interface | None = None


def attach(
    *,
    container_id: str,
    network_id: str,
    bridge: str,
    netns_path: Path,
    address: ipaddress.IPv4Interface,
    gateway: ipaddress.IPv4Address | None,
    ifname: str = "eth0",
    mtu: int = DEFAULT_MTU,
    default_route: bool = True,
    address6: ipaddress.IPv6Interface | None = None,
    gateway6: ipaddress.IPv6Address | None = None,
    mac: str = "",
    link_local: tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, ...] = (),
) -> Endpoint:
    """A veth pair: host side on ``bridge``; the peer moved into the netns as ``ifname`` with address and route.

    ``mac`` (``--mac-address``) is set on the peer before it comes up; ``address6`` and ``link_local``
    are added beside the IPv4 address, and with ``default_route`` an IPv6 default route via ``gateway6``.

    On any failure the pair is deleted (deleting either end deletes both): nothing half-made is left.
    """
    _check_name(ifname)
    host_ifname = f"veth{secrets.token_hex(4)}"
    # The peer is born with a unique temporary name: two containers' "eth0" can't collide on the host.
    temp_peer = f"vp{host_ifname[4:]}"
    with IPRoute() as ipr:
        bridge_index = _lookup(ipr, bridge)
        if bridge_index is None:
            raise NotFound(f"bridge {bridge} not found")
        fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            # The peer is born inside the container's netns: a crash between two netlink calls
            # cannot leave a pair on the host, and when that netns goes the pair goes with it.
            ipr.link("add", ifname=host_ifname, kind="veth", peer={"ifname": temp_peer, "net_ns_fd": fd})
        finally:
            os.close(fd)
        try:
            host_index = _lookup(ipr, host_ifname)
            assert host_index is not None
            # One request (each costs ~0.5 ms of CPU in pyroute2): enslaved, sized, named and up.
            ipr.link(
                "set",
                index=host_index,
                master=bridge_index,
                mtu=mtu,
                ifalias=f"{ENDPOINT_ALIAS}{container_id}:{network_id}",
                state="up",
            )

            def configure_inside() -> str:
                with IPRoute() as inner:
                    index = _lookup(inner, temp_peer)
                    if index is None:
                        raise NotFound(f"veth peer {temp_peer} did not arrive in {netns_path}")
                    if _lookup(inner, ifname) is not None:
                        raise Conflict(f"container {container_id} already has an interface {ifname}")
                    if mac:
                        inner.link("set", index=index, ifname=ifname, mtu=mtu, address=mac)
                    else:
                        inner.link("set", index=index, ifname=ifname, mtu=mtu)
                    inner.addr("add", index=index, address=str(address.ip), prefixlen=address.network.prefixlen)
                    extra: list[ipaddress.IPv4Interface | ipaddress.IPv6Interface] = list(link_local)
                    if address6 is not None:
                        extra.insert(0, address6)
                    for more in extra:
                        flags = IFA_F_NODAD if more.version == 6 else 0
                        inner.addr("add", index=index, address=str(more.ip), prefixlen=more.network.prefixlen,
                                   flags=flags)
                    inner.link("set", index=index, state="up")
                    if default_route and gateway is not None:
                        inner.route("add", dst="0.0.0.0/0", gateway=str(gateway))
                    if default_route and address6 is not None and gateway6 is not None:
                        inner.route("add", dst="::/0", gateway=str(gateway6), family=AF_INET6)
                    return str(inner.get_links(index)[0].get_attr("IFLA_ADDRESS"))

            shown_mac = netns.run_in_netns(netns_path, configure_inside)
        except BaseException:
            with contextlib.suppress(NetlinkError):
                ipr.link("del", ifname=host_ifname)
            raise
    return Endpoint(
        container_id=container_id,
        network_id=network_id,
        bridge=bridge,
        netns_path=str(netns_path),
        host_ifname=host_ifname,
        ifname=ifname,
        address=address,
        gateway=gateway,
        mac=shown_mac,
        mtu=mtu,
        address6=address6,
    )


def detach(host_ifname: str) -> None:
    """Delete the endpoint's veth pair (the peer inside the netns goes with it); idempotent."""
    with IPRoute() as ipr:
        index = _lookup(ipr, host_ifname)
        if index is not None:
            with contextlib.suppress(NetlinkError):
                ipr.link("del", index=index)


@dataclass(frozen=True, slots=True)
class OwnedLink:
    ifname: str
    kind: str  # "bridge" or "endpoint"
    network_id: str
    container_id: str | None


def owned_links() -> list[OwnedLink]:
    """Every device carrying a Skiff owner alias, read from the kernel."""
    found: list[OwnedLink] = []
    with IPRoute() as ipr:
        for link in ipr.get_links():
            alias = link.get_attr("IFLA_IFALIAS") or ""
            name = link.get_attr("IFLA_IFNAME")
            if alias.startswith(BRIDGE_ALIAS):
                found.append(OwnedLink(name, "bridge", alias[len(BRIDGE_ALIAS) :], None))
            elif alias.startswith(ENDPOINT_ALIAS):
                cid, _, net = alias[len(ENDPOINT_ALIAS) :].partition(":")
                found.append(OwnedLink(name, "endpoint", net, cid))
    return found
