"""A network's address plan (daemon/network/ipamconfig.py) and the embedded resolver's packets (resolver.py)."""

from __future__ import annotations

import ipaddress
import struct
from pathlib import Path

import pytest

from services.common.errors import InvalidArgument
from services.daemon.network import ipamconfig, resolver
from services.daemon.network.ipam import Ipam, RangeSpec
from services.gen.skiff.daemon.v1 import CreateNetworkRequest, EndpointConfig, IpamPool, Network


def test_ipam_config_checked_as_dockerd_does() -> None:
    def parse(*pools: IpamPool, ipv6: bool = False) -> ipamconfig.IpamRequest:
        return ipamconfig.parse(CreateNetworkRequest(name="n", ipam=list(pools), enable_ipv6=ipv6))

    with pytest.raises(InvalidArgument, match="it should be 10.1.0.0/16"):
        parse(IpamPool(subnet="10.1.2.3/16"))
    with pytest.raises(InvalidArgument, match="invalid gateway"):
        parse(IpamPool(subnet="10.1.0.0/16", gateway="10.2.0.1"))
    with pytest.raises(InvalidArgument, match="ip-range"):
        parse(IpamPool(subnet="10.1.0.0/16", ip_range="10.2.0.0/24"))
    with pytest.raises(InvalidArgument, match="auxiliary"):
        parse(IpamPool(subnet="10.1.0.0/16", aux_addresses={"a": "10.9.0.1"}))
    with pytest.raises(InvalidArgument, match="only one IPv4"):
        parse(IpamPool(subnet="10.1.0.0/16"), IpamPool(subnet="10.2.0.0/16"))
    assert parse(IpamPool(subnet="2001:db8::/64")).v6 is None  # ignored without EnableIPv6, as dockerd does
    both = parse(IpamPool(subnet="2001:db8::/64"), IpamPool(subnet="10.1.0.0/16"), ipv6=True)
    assert both.configured == (6, 4) and both.v6 is not None and both.v4 is not None
    with pytest.raises(InvalidArgument, match="IPAM driver"):
        ipamconfig.parse(CreateNetworkRequest(name="n"), "weird")


def test_pool_and_shown_config(tmp_path: Path) -> None:
    ipam = Ipam(tmp_path)
    net = Network(id="n1", name="n", bridge="skiff-n1")
    want = ipamconfig.IpamRequest(
        v4=None, v6=RangeSpec(ipaddress.IPv6Network("2001:db8::/64"), ip_range=ipaddress.IPv6Network("2001:db8::/96")),
        enable_ipv6=True, configured=(6,))
    pool = ipam.create_pool("n1", ipaddress.IPv4Network("10.77.0.0/24"), v6=want.v6)
    ipamconfig.describe(net, want, pool)
    assert net.enable_ipv6 and net.subnet6 == "2001:db8::/64" and net.gateway6 == "2001:db8::1"
    assert [(p.subnet, p.ip_range, p.gateway) for p in net.ipam] == [
        ("2001:db8::/64", "2001:db8::/96", "2001:db8::1"), ("10.77.0.0/24", "", "10.77.0.1")]
    assert str(ipam.allocate("n1", "c1", version=6)) == "2001:db8::2/64"
    assert ipam.release("n1", "c1") == ["2001:db8::2"]
    ula = ipamconfig.random_ula([])
    assert ula.prefixlen == 64 and ula.subnet_of(ipaddress.IPv6Network("fd00::/8"))


def test_endpoint_request() -> None:
    user = Network(name="u", subnet="10.1.0.0/16", subnet6="2001:db8::/64")
    got = ipamconfig.endpoint_request(
        EndpointConfig(ipv4_address="10.1.0.9", ipv6_address="2001:db8::9", link_local_ips=["169.254.8.8"],
                       mac_address="02-42-AC-11-00-02"), user)
    assert got.mac == "02:42:ac:11:00:02" and str(got.link_local[0]) == "169.254.8.8/16"
    with pytest.raises(InvalidArgument, match="user defined networks only"):
        ipamconfig.endpoint_request(EndpointConfig(ipv4_address="10.1.0.9"), Network(name="bridge"))
    with pytest.raises(InvalidArgument, match="no IPv6 subnet"):
        ipamconfig.endpoint_request(EndpointConfig(ipv6_address="2001:db8::9"), Network(name="v4only"))
    with pytest.raises(InvalidArgument, match="multicast"):
        ipamconfig.endpoint_request(EndpointConfig(mac_address="01:00:5e:00:00:01"), user)
    with pytest.raises(InvalidArgument, match="link-local"):
        ipamconfig.endpoint_request(EndpointConfig(link_local_ips=["10.0.0.1"]), user)


def query(name: str, qtype: int, qid: int = 0x1234) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + struct.pack("!HH", qtype, 1)


def test_resolver_packets() -> None:
    packet = query("Web.Local", resolver.QTYPE_A)
    q = resolver.parse_question(packet)
    assert q is not None and q.name == "web.local" and q.qtype == resolver.QTYPE_A and q.end == len(packet)
    reply = resolver.answer(packet, q, ["10.1.2.3", "10.1.2.4"])
    qid, flags, qd, an = struct.unpack("!HHHH", reply[:8])
    assert (qid, flags & 0x8000, flags & 0xF, qd, an) == (0x1234, 0x8000, 0, 1, 2)
    assert reply.endswith(bytes([10, 1, 2, 4])) and bytes([10, 1, 2, 3]) in reply
    six = query("web", resolver.QTYPE_AAAA)
    q6 = resolver.parse_question(six)
    assert q6 is not None
    assert resolver.answer(six, q6, ["2001:db8::1"]).endswith(ipaddress.IPv6Address("2001:db8::1").packed)
    assert resolver.failure(six, q6, resolver.RCODE_SERVFAIL)[3] & 0xF == resolver.RCODE_SERVFAIL
    assert resolver.parse_question(b"\0" * 5) is None
    assert resolver.parse_question(reply) is None  # an answer, not a question
