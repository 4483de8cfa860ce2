"""A test's own networking world: bridges, namespaces, rules and proxies named after its unique id.

Everything a test makes is registered on the ``world`` fixture and removed in its finalizer even when
the test fails: containers (through the runtime), proxies, veths, bridges, iptables rules, pin files.
Addresses come from 10.200.0.0/13-style ranges checked against the host's routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from services.daemon.network import bridge, firewall, netns
from services.daemon.network.bridge import BridgeSpec, Endpoint
from services.daemon.network.dns import ContainerDns, bind_mounts, write_files
from services.daemon.network.ipam import Ipam, host_networks
from services.daemon.network.portproxy import ProxyRegistry
from tests.conftest import needs_root
from tests.integration.lowlevel.conftest import Runtime, wait_until


@dataclass(slots=True)
class Net:
    network_id: str
    bridge: str
    subnet: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address


@dataclass(slots=True)
class World:
    uid: str  # 12 hex characters of the test's unique id
    prefix: Path
    rt: Runtime
    ipam: Ipam
    netns_dir: Path
    loop: asyncio.AbstractEventLoop
    proxies: ProxyRegistry = field(default_factory=ProxyRegistry)
    nets: list[Net] = field(default_factory=list)
    endpoints: list[Endpoint] = field(default_factory=list)
    _taken: list[ipaddress.IPv4Network] = field(default_factory=list)

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(asyncio.wait_for(coro, 30))

    def free_subnet(self) -> ipaddress.IPv4Network:
        """A /24 in 10.200.0.0–10.239.255.0 picked from the id, clear of the host's routes."""
        busy = [*host_networks(), *self._taken]
        seed = int(hashlib.sha256(self.uid.encode()).hexdigest(), 16)
        for i in range(200):  # bounded search
            n = (seed + i * 7919) % (40 * 256)
            net = ipaddress.IPv4Network(f"10.{200 + n // 256}.{n % 256}.0/24")
            if not any(net.overlaps(b) for b in busy):
                self._taken.append(net)
                return net
        raise RuntimeError("no free test subnet")

    def network(self, suffix: str, *, rules: bool = True) -> Net:
        network_id = f"{self.uid}{suffix}"
        subnet = self.free_subnet()
        pool = self.ipam.create_pool(network_id, subnet)
        # "sk" + 12 hex + 1 suffix: 15 characters, unique to this test.
        net = Net(network_id, f"sk{self.uid}{suffix}"[:15], subnet, pool.gateway)
        self.nets.append(net)
        bridge.ensure_bridge(BridgeSpec(net.bridge, network_id, ipaddress.IPv4Interface(f"{pool.gateway}/24")))
        if rules:
            firewall.add_network(net.bridge, subnet)
        return net

    def container_netns(self, name: str) -> Path:
        return netns.create(self.netns_dir, name)

    def endpoint(self, net: Net, cid: str, path: Path, ip: str | None = None, ifname: str = "eth0") -> Endpoint:
        address = self.ipam.allocate(net.network_id, cid, ipaddress.IPv4Address(ip) if ip else None)
        ep = bridge.attach(
            container_id=cid,
            network_id=net.network_id,
            bridge=net.bridge,
            netns_path=path,
            address=address,
            gateway=net.gateway,
            ifname=ifname,
            default_route=ifname == "eth0",
        )
        self.endpoints.append(ep)
        return ep

    def start(
        self, args: list[str], *, cid: str, netns_path: Path, dns: ContainerDns | None = None, www: str | None = None
    ) -> Path:
        """A running busybox container joined to ``netns_path``; returns its bundle."""

        def edit(spec: dict[str, Any]) -> None:
            spec["linux"]["namespaces"] = [
                {"type": "network", "path": str(netns_path)} if ns["type"] == "network" else ns
                for ns in spec["linux"]["namespaces"]
            ]
            if dns is not None:
                files = write_files(self.prefix / "dns" / cid, dns)
                spec["mounts"].extend(bind_mounts(files))

        self.rt.ids.append(cid)
        _, bundle, _ = self.rt.bundle(args, cid=cid, edit=edit)
        if www is not None:
            (bundle / "rootfs" / "www").mkdir()
            (bundle / "rootfs" / "www" / "index.html").write_text(www)
        self.rt.create(cid, bundle, out=bundle.parent / f"{cid}.out").ok()
        self.rt.cmd("start", cid).ok()
        return bundle

    def cleanup(self) -> None:
        with contextlib.suppress(Exception):
            self.run(self.proxies.close_all_except(set()))
        self.rt.cleanup()
        for ep in self.endpoints:
            bridge.detach(ep.host_ifname)
        for link in bridge.owned_links():  # anything else of this test's (endpoints made by code under test)
            if self.uid in link.network_id:
                bridge.detach(link.ifname) if link.kind == "endpoint" else bridge.delete_bridge(link.ifname)
        for net in self.nets:
            firewall.remove_network(net.bridge, net.subnet)
            bridge.delete_bridge(net.bridge)
        if self.nets:
            firewall.remove_base_if_unused()  # as a daemon does when its last network goes
        for name in netns.list_names(self.netns_dir):
            netns.remove(self.netns_dir, name)


@pytest.fixture
def world(runtime_argv: list[str], prefix: Path, unique_id: str) -> Iterator[World]:
    needs_root()
    if not Path("/bin/busybox").exists():
        pytest.skip("needs busybox-static (/bin/busybox)")
    if shutil.which("iptables") is None:
        pytest.skip("needs iptables")
    os.chmod(prefix, 0o755)
    loop = asyncio.new_event_loop()
    w = World(
        uid=unique_id[-12:],
        prefix=prefix,
        rt=Runtime(runtime_argv, prefix),
        ipam=Ipam(prefix / "ipam"),
        netns_dir=prefix / "run" / "netns",
        loop=loop,
    )
    try:
        yield w
    finally:
        try:
            w.cleanup()
        finally:
            loop.close()


__all__ = ["World", "Net", "wait_until"]
