"""Endpoints made and released concurrently, and reconciliation after a simulated daemon crash."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from services.daemon.network import bridge, firewall, netns
from services.daemon.network.portproxy import PortMapping
from services.daemon.network.reconcile import reconcile
from tests.integration.network.conftest import World

pytestmark = pytest.mark.root

COUNT = 20


def _links_of(network_id: str) -> dict[str, str]:
    """host veth name -> container id, for this network's endpoints as the kernel has them."""
    return {
        link.ifname: link.container_id or ""
        for link in bridge.owned_links()
        if link.kind == "endpoint" and link.network_id == network_id
    }


def test_concurrent_endpoints_get_unique_addresses_and_all_are_released(world: World) -> None:
    net = world.network("c", rules=False)
    ids = [f"{world.uid}-{i:02d}" for i in range(COUNT)]

    def up(cid: str) -> bridge.Endpoint:
        path = netns.create(world.netns_dir, cid)
        address = world.ipam.allocate(net.network_id, cid)
        return bridge.attach(
            container_id=cid,
            network_id=net.network_id,
            bridge=net.bridge,
            netns_path=path,
            address=address,
            gateway=net.gateway,
        )

    def down(ep: bridge.Endpoint) -> None:
        bridge.detach(ep.host_ifname)
        world.ipam.release(net.network_id, ep.container_id)
        netns.remove(world.netns_dir, ep.container_id)

    async def all_up() -> list[bridge.Endpoint]:
        return list(await asyncio.gather(*(asyncio.to_thread(up, cid) for cid in ids)))

    endpoints = world.run(all_up())
    world.endpoints.extend(endpoints)
    addresses = {ep.address.ip for ep in endpoints}
    assert len(addresses) == COUNT, sorted(addresses)
    assert all(a in net.subnet and a != net.gateway for a in addresses)
    assert len(world.ipam.get_pool(net.network_id).allocations) == COUNT
    assert sorted(_links_of(net.network_id).values()) == sorted(ids)

    async def all_down() -> None:
        await asyncio.gather(*(asyncio.to_thread(down, ep) for ep in endpoints))

    world.run(all_down())
    assert world.ipam.get_pool(net.network_id).allocations == {}
    assert _links_of(net.network_id) == {}
    assert netns.list_names(world.netns_dir) == []


def test_reconcile_after_crash_removes_exactly_the_orphans(world: World) -> None:
    net = world.network("r")
    gone_net = world.network("g")  # a network deleted while the daemon was down
    ids = [f"{world.uid}-{name}" for name in ("live0", "live1", "dead0", "dead1")]
    live = set(ids[:2])
    endpoints: dict[str, bridge.Endpoint] = {}
    for cid in ids:
        path = world.container_netns(cid)
        endpoints[cid] = world.endpoint(net, cid, path)
    stray = world.container_netns(f"{world.uid}-dead2")
    world.endpoint(gone_net, f"{world.uid}-dead2", stray)
    live_on_gone = f"{ids[0]}"  # a live container's endpoint on the gone network goes too
    world.endpoint(gone_net, live_on_gone, world.netns_dir / live_on_gone, ifname="eth1")
    target = str(endpoints[ids[0]].address.ip)
    for cid in (ids[1], ids[2]):
        world.run(world.proxies.publish(cid, [PortMapping("tcp", "127.0.0.1", 0, target, 80)]))

    # The crash: nothing is told to the network layer; only the set of existing containers survives.
    report = world.run(
        reconcile(
            live_containers=live,
            live_networks={net.network_id},
            netns_dir=world.netns_dir,
            ipam=world.ipam,
            proxies=world.proxies,
        )
    )

    assert sorted(report.netns) == sorted([ids[2], ids[3], f"{world.uid}-dead2"])
    assert sorted(report.proxies) == [ids[2]]
    assert sorted(report.addresses[net.network_id]) == sorted(str(endpoints[c].address.ip) for c in ids[2:])
    assert report.bridges == [gone_net.bridge]
    # What belongs to live containers is untouched...
    assert sorted(_links_of(net.network_id).values()) == sorted(live)
    assert sorted(netns.list_names(world.netns_dir)) == sorted(live)
    assert all(netns.is_mounted(world.netns_dir / c) for c in live)
    assert set(world.ipam.get_pool(net.network_id).allocations.values()) == live
    assert list(world.proxies.proxies) == [ids[1]]
    assert net.bridge in firewall.bridges_with_rules()
    # ...and the gone network left nothing: bridge, endpoints, rules, pool.
    assert _links_of(gone_net.network_id) == {}
    assert not any(link.ifname == gone_net.bridge for link in bridge.owned_links())
    assert gone_net.bridge not in firewall.bridges_with_rules()
    assert (str(gone_net.subnet), gone_net.bridge) not in firewall.masquerade_rules()
    assert gone_net.network_id not in {p.network_id for p in world.ipam.pools()}
    # A second pass finds nothing more to do.
    again = world.run(
        reconcile(
            live_containers=live,
            live_networks={net.network_id},
            netns_dir=world.netns_dir,
            ipam=world.ipam,
            proxies=world.proxies,
        )
    )
    assert (again.veths, again.netns, again.addresses, again.proxies, again.bridges) == ([], [], {}, [], [])
    assert ipaddress.IPv4Address(target) in net.subnet
