"""After a daemon crash: remove every piece of Skiff networking that no existing container owns.

The kernel and the disk are read, not the daemon's memory: endpoint veths carry their owner in their
alias (see ``bridge``), namespaces are named by container id under ``<run>/netns``, IPAM files name
each address's owner. Networks are reconciled too when the caller passes the set of existing ones.
"""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from services.daemon.network import bridge, firewall, netns
from services.daemon.network.ipam import Ipam
from services.daemon.network.portproxy import ProxyRegistry


@dataclass(slots=True)
class Report:
    veths: list[str] = field(default_factory=list)
    netns: list[str] = field(default_factory=list)
    addresses: dict[str, list[str]] = field(default_factory=dict)
    proxies: list[str] = field(default_factory=list)
    bridges: list[str] = field(default_factory=list)
    rules: list[str] = field(default_factory=list)


def reconcile_sync(
    *,
    live_containers: set[str],
    netns_dir: Path,
    ipam: Ipam,
    live_networks: set[str] | None = None,
    netns_prefix: str = "",
) -> Report:
    """The blocking part (netlink, mounts, files, iptables): run it with ``asyncio.to_thread``.

    ``netns_prefix`` limits which pin files are considered Skiff's (all of the folder by default).
    ``live_networks`` None leaves networks alone; a set removes bridges, rules and pools of the others.
    """
    report = Report()
    # Only this daemon's networks (those with a pool in its IPAM folder): another Skiff under another
    # root prefix on the same host keeps its devices.
    known = {p.network_id for p in ipam.pools()}
    for link in bridge.owned_links():
        if (
            link.kind == "endpoint"
            and link.network_id in known
            and (
                link.container_id not in live_containers
                or (live_networks is not None and link.network_id not in live_networks)
            )
        ):
            bridge.detach(link.ifname)
            report.veths.append(link.ifname)
    for name in netns.list_names(netns_dir):
        if name.startswith(netns_prefix) and name not in live_containers:
            netns.remove(netns_dir, name)
            report.netns.append(name)
    report.addresses = ipam.release_all_except(live_containers)
    if live_networks is not None:
        pools = {p.network_id: p for p in ipam.pools()}
        for link in bridge.owned_links():
            if link.kind == "bridge" and link.network_id in known and link.network_id not in live_networks:
                pool = pools.get(link.network_id)
                if pool is not None:
                    firewall.remove_network(link.ifname, pool.subnet)
                    report.rules.append(link.ifname)
                bridge.delete_bridge(link.ifname)
                report.bridges.append(link.ifname)
        for network_id in pools:
            if network_id not in live_networks:
                ipam.remove_pool(network_id)
        _remove_stray_rules(report)
        if firewall.remove_base_if_unused():  # the last Skiff network of the namespace is gone
            report.rules.append(firewall.FORWARD_CHAIN)
    return report


def _remove_stray_rules(report: Report) -> None:
    """Rules naming a bridge that no longer exists (a crash between bridge delete and rule delete)."""
    existing = {link.ifname for link in bridge.owned_links() if link.kind == "bridge"}
    masq = dict((b, s) for s, b in firewall.masquerade_rules())
    for name in firewall.bridges_with_rules() - existing:
        subnet = masq.get(name)
        firewall.remove_network(name, ipaddress.IPv4Network(subnet) if subnet else ipaddress.IPv4Network("0.0.0.0/32"))
        report.rules.append(name)


async def reconcile(
    *,
    live_containers: set[str],
    netns_dir: Path,
    ipam: Ipam,
    proxies: ProxyRegistry | None = None,
    live_networks: set[str] | None = None,
    netns_prefix: str = "",
) -> Report:
    """Daemon start: close stray proxies in this process, then the blocking clean-up on a thread."""
    closed = await proxies.close_all_except(live_containers) if proxies is not None else []
    report = await asyncio.to_thread(
        reconcile_sync,
        live_containers=live_containers,
        netns_dir=netns_dir,
        ipam=ipam,
        live_networks=live_networks,
        netns_prefix=netns_prefix,
    )
    report.proxies = closed
    return report
