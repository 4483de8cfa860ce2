"""Docker's networks over the network library: records, the built-in ones, container endpoints, ports.

It stands on the shared container table (records.ContainerRecords), never on the lifecycle. The
lifecycle (containers.ContainerManager) calls three hooks: ``validate`` at create, ``setup`` before a
task starts (all of it or nothing: namespace, endpoints, DNS files, published ports; it returns the
namespace path and the files' binds for the start's spec), ``teardown`` when the task has ended or
the container goes. The daemon's start-up calls ``load`` and ``restore`` (proxies published again
for running containers, everything else reconciled away).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import secrets
from pathlib import Path
from typing import Any

import structlog

from services.common.daemon_config import DaemonConfig, LiveConfig, bridge_mtu
from services.common.errors import Conflict, FailedPrecondition, InvalidArgument, NotFound, SkiffError, Unavailable
from services.common.paths import Paths
from services.daemon import links as legacy_links
from services.daemon.network import bridge, dns, firewall, ipamconfig, netns, reconcile, resolver
from services.daemon.network.ipam import Ipam
from services.daemon.network.portproxy import PortMapping, ProxyRegistry
from services.daemon.network.records import NetworkRecords
from services.daemon.network.releases import EndpointReleases
from services.daemon.records import ContainerRecords, Entry, now_rfc3339
from services.daemon.spec import NetworkAttachment
from services.gen.skiff.daemon.v1 import (
    Container,
    ContainerConfig,
    CreateNetworkRequest,
    EndpointConfig,
    EndpointSettings,
    Network,
    NetworkInspect,
    NetworkMember,
    NetworkSettings,
    PortBinding,
)

log = structlog.get_logger(service="daemon")

BRIDGE_NAME_ENV = "SKIFF_BRIDGE_NAME"
DEFAULT_SUBNET_ENV = "SKIFF_DEFAULT_SUBNET"
MTU = 1500
BUILTIN = ("bridge", "host", "none")


def parse_port(spec: str) -> tuple[int, str]:
    """``80``, ``80/tcp``, ``53/udp`` to (port, proto)."""
    port, _, proto = spec.partition("/")
    proto = proto or "tcp"
    if proto not in ("tcp", "udp") or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidArgument(f'invalid port specification: "{spec}"')
    return int(port), proto


def _host_port(text: str) -> int:
    if not text:
        return 0
    low = text.split("-", 1)[0]
    if not low.isdigit() or int(low) > 65535:
        raise InvalidArgument(f'invalid host port: "{text}"')
    return int(low)


class Networking:
    def __init__(self, paths: Paths, containers: ContainerRecords, settings: LiveConfig | None = None) -> None:
        self.containers = containers
        self.settings = settings or LiveConfig(paths, current=DaemonConfig())  # daemon.json's default-address-pools
        self.paths = paths
        self.folder = paths.daemon_lib / "network"
        self.ipam = Ipam(self.folder / "ipam")
        self.releases = EndpointReleases(self.ipam.release)
        self.records = NetworkRecords(self.folder / "records")
        self.proxies = ProxyRegistry()
        self.resolvers = resolver.Resolvers(lambda cid, name: resolver.lookup_in(self, cid, name))  # 127.0.0.11
        self.networks: dict[str, Network] = {}
        self.bridge_name = os.environ.get(BRIDGE_NAME_ENV) or bridge.DEFAULT_BRIDGE
        self.default_subnet = os.environ.get(DEFAULT_SUBNET_ENV) or ""
        self.lock = asyncio.Lock()  # network create/remove only; container endpoints use their own lock

    # ---- start-up ----

    async def load(self) -> None:
        for net in await asyncio.to_thread(self.records.load_all):
            self.networks[net.id] = net
        names = {n.name for n in self.networks.values()}
        for name, driver in (("host", "host"), ("none", "null")):
            if name not in names:
                await self._save(
                    Network(id=secrets.token_hex(32), name=name, driver=driver, scope="local", created=now_rfc3339())
                )
        if "bridge" not in names:
            net = Network(
                id=secrets.token_hex(32),
                name="bridge",
                driver="bridge",
                scope="local",
                created=now_rfc3339(),
                bridge=self.bridge_name,
                options={**bridge.DEFAULT_BRIDGE_OPTIONS, "com.docker.network.bridge.name": self.bridge_name},
            )
            want = ipamconfig.parse(CreateNetworkRequest(subnet=self.default_subnet))
            await self._make_bridge(net, want, adopt_device=not self.default_subnet)
            await self._save(net)
        for net in self.networks.values():
            if net.driver == "bridge":
                await self._make_bridge(net, ipamconfig.of_record(net))  # idempotent: after a reboot too

    async def restore(self) -> None:
        """After the containers are loaded: proxies again for the running ones, the rest reconciled away."""
        live = {cid for cid, e in self.containers.entries.items()
                if e.running and e.record.network_settings.sandbox_key}
        report = await reconcile.reconcile(
            live_containers=live,
            live_networks=set(self.networks),
            netns_dir=self.paths.netns,
            ipam=self.ipam,
            proxies=self.proxies,
        )
        log.info("network reconciled", veths=len(report.veths), netns=len(report.netns), bridges=len(report.bridges))
        for cid in live:
            if (entry := self.containers.entries.get(cid)) is None:
                continue  # removed meanwhile: a --rm container whose exit came while the daemon was down
            record = entry.record
            wanted = self._mappings_from_settings(record)
            if wanted:
                try:
                    await self.proxies.publish(cid, wanted)
                except SkiffError as exc:
                    log.warning("ports not published again", id=cid, error=exc.message)
            if (found := self._dns_of(record)).embedded:
                await self.resolvers.start(cid, Path(record.network_settings.sandbox_key), dns.external_servers(found))

    async def _save(self, net: Network) -> None:
        await asyncio.to_thread(self.records.save, net)
        self.networks[net.id] = net

    async def _make_bridge(self, net: Network, want: ipamconfig.IpamRequest, adopt_device: bool = False) -> None:
        def make() -> None:
            pools = {p.network_id: p for p in self.ipam.pools()}
            pool = pools.get(net.id)
            new = pool is None
            if pool is None:
                pool = ipamconfig.make_pool(self.ipam, net, want, list(pools.values()), adopt_device, self.settings)
            ipamconfig.describe(net, want, pool)
            try:
                bridge.ensure_bridge(
                    bridge.BridgeSpec(
                        net.bridge, net.id, ipaddress.IPv4Interface(f"{pool.gateway}/{pool.subnet.prefixlen}"),
                        bridge_mtu(self.settings.current, net.name, MTU),
                        ipaddress.IPv6Interface(f"{pool.v6.gateway}/{pool.v6.subnet.prefixlen}") if pool.v6 else None,
                    )
                )
                firewall.add_network(net.bridge, pool.subnet, masquerade=not net.internal)
            except BaseException:
                # Undo only a network being created now. An existing one (daemon start) keeps its bridge and its
                # pool: containers may be running on them, and the next start tries the rules again.
                if new:
                    firewall.remove_network(net.bridge, pool.subnet)
                    bridge.delete_bridge(net.bridge)
                    self.ipam.remove_pool(net.id)
                raise

        try:
            await asyncio.to_thread(make)
        except ValueError as exc:
            raise InvalidArgument(f"invalid subnet or gateway: {exc}") from None

    # ---- lookup ----

    def get(self, ref: str) -> Network:
        if ref in self.networks:
            return self.networks[ref]
        for net in self.networks.values():
            if net.name == ref:
                return net
        matches = [n for nid, n in self.networks.items() if ref and nid.startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        raise NotFound(f"network {ref} not found")

    def members(self, network_id: str) -> list[tuple[Entry, EndpointSettings]]:
        found = []
        for entry in self.containers.entries.values():
            for ep in entry.record.network_settings.endpoints:
                if ep.network_id == network_id:
                    found.append((entry, ep))
        return found

    # ---- networks API ----

    async def create(self, r: CreateNetworkRequest) -> Network:
        if not r.name.strip():
            raise InvalidArgument("invalid name: name is empty")  # any other name is fine (dockerd)
        want = ipamconfig.parse(r, r.ipam_driver)
        if r.driver not in ("", "bridge"):
            if r.driver not in ("host", "null", "overlay", "macvlan", "ipvlan"):  # not dockerd's: a plugin's
                raise NotFound(f'plugin "{r.driver}" not found')
            if r.driver == "overlay":  # swarm-scoped: dockerd asks for a swarm first
                raise Unavailable('This node is not a swarm manager. Use "docker swarm init" or "docker swarm join" '
                                  "to connect this node to swarm and try again.")
            raise InvalidArgument(f"network driver {r.driver} is not supported (bridge only)")
        async with self.lock:
            if any(n.name == r.name for n in self.networks.values()):
                raise Conflict(f"network with name {r.name} already exists")
            nid = secrets.token_hex(32)
            name = r.options.get("com.docker.network.bridge.name") or bridge.user_bridge_name(nid)
            net = Network(
                id=nid,
                name=r.name,
                driver="bridge",
                scope="local",
                created=now_rfc3339(),
                bridge=name,
                internal=r.internal,
                attachable=r.attachable,
                labels=dict(r.labels),
                options=dict(r.options),
            )
            await self._make_bridge(net, want)
            try:
                await self._save(net)
            except BaseException:
                await self._drop_bridge(net)
                raise
        log.info("network created", id=nid, name=r.name, subnet=net.subnet)
        return net

    async def _drop_bridge(self, net: Network) -> None:
        await self.releases.settled()  # its last endpoints' veths gone before the bridge they sit on

        def drop() -> None:
            firewall.remove_network(net.bridge, ipaddress.IPv4Network(net.subnet))
            bridge.delete_bridge(net.bridge)
            self.ipam.remove_pool(net.id)

        await asyncio.to_thread(drop)

    def list(self) -> list[Network]:
        return sorted(self.networks.values(), key=lambda n: n.created)

    def inspect(self, ref: str) -> NetworkInspect:
        net = self.get(ref)
        members = [
            NetworkMember(container_id=e.record.id, name=e.record.name, endpoint=ep) for e, ep in self.members(net.id)
        ]
        return NetworkInspect(network=net, containers=members)

    async def remove(self, ref: str) -> None:
        net = self.get(ref)
        if net.name in BUILTIN:
            raise Conflict(f"{net.name} is a pre-defined network and cannot be removed")
        async with self.lock:
            if self.members(net.id):
                raise Conflict(f"error while removing network: network {net.name} id {net.id} has active endpoints")
            users = [e.record.name for e in self.containers.entries.values() if net.name in self._wanted(e.record)]
            if users:
                raise Conflict(
                    f"error while removing network: network {net.name} id {net.id} is in use by container {users[0]}"
                )
            await asyncio.to_thread(self.records.delete, net.id)
            self.networks.pop(net.id, None)
            await self._drop_bridge(net)
        log.info("network removed", id=net.id, name=net.name)

    async def prune(self) -> list[str]:
        deleted = []
        for net in list(self.networks.values()):
            if net.name in BUILTIN:
                continue
            with contextlib.suppress(Conflict):
                await self.remove(net.id)
                deleted.append(net.name)
        return deleted

    # ---- container hooks ----

    def _mode(self, config: ContainerConfig) -> str:
        mode = config.host.network_mode
        return "bridge" if mode in ("", "default") else mode

    def _wanted(self, record: Container) -> list[str]:
        """Names of the networks a container joins (its mode's first, then NetworkingConfig's)."""
        mode = self._mode(record.config)
        if mode in ("host", "none") or mode.startswith("container:"):
            return []
        names = [] if record.config.host.left_mode_network else [mode]  # disconnected from it: dockerd keeps the mode
        names += [n for n in record.config.host.endpoints if n not in names]
        return names

    async def validate(self, config: ContainerConfig) -> None:
        mode = self._mode(config)
        if mode.startswith("container:"):
            self.containers.get(mode.partition(":")[2])
        elif mode not in ("host", "none"):
            self.get(mode)
            for name in config.host.endpoints:
                self.get(name)
        for binding in config.host.port_bindings:
            parse_port(binding.container_port)
            _host_port(binding.host_port)
        for port in config.exposed_ports:
            parse_port(port)
        for value in config.host.extra_hosts:
            dns.parse_add_host(value)
        if config.host.port_bindings and mode in ("none", "host"):
            pass  # Docker ignores published ports there (with a warning)

    def _container_dir(self, record: Container) -> Path:
        return self.containers.folder(record.id) / "net"

    def _dns_of(self, record: Container) -> dns.ContainerDns:
        cfg, host = record.config, record.config.host
        eps = list(record.network_settings.endpoints)
        first = eps[0] if eps else None
        peers: list[dns.HostEntry] = []
        for ep in eps:
            net = self.networks.get(ep.network_id)
            if net is None or net.name == "bridge":
                continue  # Docker: no name resolution on the default bridge
            links = dns.link_aliases(ep.config.links if ep.config else ())  # Links: this container's own names
            for other, oep in self.members(ep.network_id):
                if other.record.id != record.id:  # a member has its endpoint: it is running or starting now
                    names = (other.record.name, *oep.aliases, other.record.id[:12], *links.get(other.record.name, ()))
                    peers.append(dns.HostEntry(oep.ip_address, tuple(dict.fromkeys(names))))
        peers += legacy_links.hosts(self.containers, record)  # legacy links on the default bridge
        own = () if first is None else tuple(a for a in first.aliases if a)
        return dns.ContainerDns(
            hostname=cfg.hostname or record.id[:12],
            address=first.ip_address if first else None,
            own_names=own,
            domainname=cfg.domainname,
            peers=tuple(peers),
            extra_hosts=tuple(dns.parse_add_host(h) for h in host.extra_hosts),
            dns=tuple(host.dns) or self.settings.current.dns,  # daemon.json's dns: when the container has none
            dns_search=tuple(host.dns_search),
            dns_options=tuple(host.dns_options),
            embedded=any(self.networks[ep.network_id].name != "bridge" for ep in eps if ep.network_id in self.networks),
        )

    async def setup(self, record: Container) -> NetworkAttachment:
        """Everything the container's network needs before its task starts; all or nothing.

        Returns what the start's spec takes from it: the namespace to join and the files to bind."""
        mode = self._mode(record.config)
        settings = NetworkSettings()
        record.network_settings = settings
        early_files: dict[str, Path] | None = None  # with their DNS, when written beside the netns
        found: dns.ContainerDns | None = None
        try:
            if mode == "host":
                path = ""
            elif mode.startswith("container:"):
                other = self.containers.get(mode.partition(":")[2])
                if not other.running or not other.record.network_settings.sandbox_key:
                    raise Conflict(f"cannot join network of a non running container: {other.record.id}")
                path = other.record.network_settings.sandbox_key
                osettings = other.record.network_settings
                settings.hosts_path, settings.hostname_path = osettings.hosts_path, osettings.hostname_path
                settings.resolv_conf_path = osettings.resolv_conf_path
            else:
                wanted = self._wanted(record)
                jobs = [asyncio.to_thread(netns.create, self.paths.netns, record.id)]
                if not wanted:  # no endpoint: the DNS files name nothing of the namespace, written meanwhile
                    found = self._dns_of(record)
                    jobs.append(asyncio.to_thread(dns.write_files, self._container_dir(record), found))
                made = await asyncio.gather(*jobs, return_exceptions=True)
                if not isinstance(made[0], BaseException):
                    settings.sandbox_key = path = str(made[0])
                for outcome in made:
                    if isinstance(outcome, BaseException):
                        raise outcome
                early_files = made[1] if len(made) > 1 else None
                for i, name in enumerate(wanted):
                    cfg = record.config.host.endpoints.get(name) or EndpointConfig()
                    await self._attach(record, self.get(name), cfg, i)
            if not mode.startswith("container:"):
                if early_files is None or found is None:
                    found = self._dns_of(record)  # the endpoints attached above are in it
                    files = await asyncio.to_thread(dns.write_files, self._container_dir(record), found)
                else:
                    files = early_files
                if found.embedded:
                    await self.resolvers.start(record.id, Path(path), dns.external_servers(found))
                settings.hosts_path = str(files["/etc/hosts"])
                settings.hostname_path = str(files["/etc/hostname"])
                settings.resolv_conf_path = str(files["/etc/resolv.conf"])
            wanted = self._mappings(record)
            if wanted:
                started = await self.proxies.publish(record.id, wanted)
                settings.ports = [
                    PortBinding(
                        container_port=f"{m.container_port}/{m.proto}", host_ip=m.host_ip, host_port=str(m.host_port)
                    )
                    for m in started
                ]
        except BaseException:
            await self.teardown(record)
            raise
        await self._refresh_peers(record)
        return NetworkAttachment(path, self._file_mounts(settings))

    async def _attach(self, record: Container, net: Network, cfg: EndpointConfig, index: int) -> EndpointSettings:
        if net.driver != "bridge":
            raise InvalidArgument(f"container cannot be connected to network {net.name} ({net.driver})")
        want = ipamconfig.endpoint_request(cfg, net)
        await self.releases.settled()  # an address (or this container's own) still held by a dying veth
        addr = await asyncio.to_thread(self.ipam.allocate, net.id, record.id, want.ipv4)
        addr6 = None
        try:
            if net.subnet6:
                addr6 = await asyncio.to_thread(self.ipam.allocate, net.id, record.id, want.ipv6, version=6)
            ep = await asyncio.to_thread(
                bridge.attach,
                container_id=record.id,
                network_id=net.id,
                bridge=net.bridge,
                netns_path=Path(record.network_settings.sandbox_key),
                address=addr,
                gateway=ipaddress.IPv4Address(net.gateway),
                ifname=f"eth{index}",
                default_route=(index == 0),
                mtu=bridge_mtu(self.settings.current, net.name, MTU),
                address6=addr6,
                gateway6=ipaddress.IPv6Address(net.gateway6) if addr6 else None,
                mac=want.mac,
                link_local=want.link_local,
            )
        except BaseException:
            await asyncio.to_thread(self.ipam.release, net.id, record.id)
            raise
        aliases = list(cfg.aliases)
        if net.name != "bridge":
            aliases += [a for a in (record.id[:12],) if a not in aliases]
        settings = EndpointSettings(
            network_id=net.id,
            network_name=net.name,
            endpoint_id=secrets.token_hex(32),
            ip_address=str(addr.ip),
            prefix_len=addr.network.prefixlen,
            gateway=net.gateway,
            mac_address=ep.mac,
            aliases=aliases,
            host_ifname=ep.host_ifname,
            ifname=ep.ifname,
            global_ipv6_address=str(addr6.ip) if addr6 else "",
            global_ipv6_prefix_len=addr6.network.prefixlen if addr6 else 0,
            ipv6_gateway=net.gateway6 if addr6 else "",
            config=cfg,
        )
        record.network_settings.endpoints.append(settings)
        return settings

    def _mappings(self, record: Container) -> list[PortMapping]:
        eps = record.network_settings.endpoints
        if not eps:
            return []
        host = record.config.host
        bindings = list(host.port_bindings)
        if host.publish_all_ports:
            bound = {b.container_port for b in bindings}
            for port in record.config.exposed_ports:
                p, proto = parse_port(port)
                if f"{p}/{proto}" not in bound and port not in bound:
                    bindings.append(PortBinding(container_port=f"{p}/{proto}"))
        mappings = []
        for b in bindings:
            port, proto = parse_port(b.container_port)
            mappings.append(
                PortMapping(proto, b.host_ip or "0.0.0.0", _host_port(b.host_port), eps[0].ip_address, port)
            )
        return mappings

    def _mappings_from_settings(self, record: Container) -> list[PortMapping]:
        eps = record.network_settings.endpoints
        if not eps:
            return []
        out = []
        for b in record.network_settings.ports:
            port, proto = parse_port(b.container_port)
            out.append(PortMapping(proto, b.host_ip, int(b.host_port), eps[0].ip_address, port))
        return out

    @staticmethod
    def _file_mounts(settings: NetworkSettings) -> tuple[dict[str, Any], ...]:
        if not settings.hosts_path:
            return ()
        return tuple(dns.bind_mounts({
            "/etc/hosts": Path(settings.hosts_path),
            "/etc/hostname": Path(settings.hostname_path),
            "/etc/resolv.conf": Path(settings.resolv_conf_path),
        }))

    async def teardown(self, record: Container) -> None:
        """Release the container's proxies, endpoints, addresses and namespace; idempotent."""
        settings = record.network_settings
        await self.proxies.unpublish(record.id)
        await self.resolvers.stop(record.id)
        left = [ep.network_id for ep in settings.endpoints]
        if settings.sandbox_key:  # unpinned, it goes with its veths; their addresses later (releases.py)
            await asyncio.to_thread(netns.remove, self.paths.netns, record.id)
        self.releases.start(record.id, [(ep.host_ifname, ep.network_id) for ep in settings.endpoints])
        files = (settings.hosts_path, settings.hostname_path, settings.resolv_conf_path)
        record.network_settings = NetworkSettings(
            hosts_path=files[0], hostname_path=files[1], resolv_conf_path=files[2]
        )
        for nid in left:
            await self._refresh_network(nid)

    async def _refresh_peers(self, record: Container) -> None:
        for ep in record.network_settings.endpoints:
            await self._refresh_network(ep.network_id)
        for parent in legacy_links.parents(self.containers, record):  # their hosts entry for its new address
            with contextlib.suppress(OSError):
                await self._refresh_own(parent)

    async def _refresh_network(self, network_id: str) -> None:
        net = self.networks.get(network_id)
        if net is None or net.name == "bridge":
            return
        for entry, _ in self.members(network_id):
            s = entry.record.network_settings
            if entry.running and s.hosts_path:
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(dns.update_hosts, Path(s.hosts_path).parent, self._dns_of(entry.record))

    # ---- connect / disconnect ----

    async def connect(self, network: str, container: str, cfg: EndpointConfig) -> None:
        net = self.get(network)
        entry = self.containers.get(container)
        record = entry.record
        mode = self._mode(record.config)
        if mode in ("host", "none") or mode.startswith("container:"):
            raise InvalidArgument(
                f"container sharing network namespace with another container or host cannot "
                f"be connected to any other network ({mode})"
            )
        async with entry.lock:
            if net.name in self._wanted(record) and (
                not entry.running or any(ep.network_id == net.id for ep in record.network_settings.endpoints)
            ):
                raise Conflict(f"endpoint with name {record.name} already exists in network {net.name}")
            if entry.running:
                index = max((int(ep.ifname[3:]) for ep in record.network_settings.endpoints), default=-1) + 1
                await self._attach(record, net, cfg, index)
            if net.name == mode:
                record.config.host.left_mode_network = False
            record.config.host.endpoints[net.name] = cfg  # kept for inspect (IPAMConfig, MacAddress, Links...)
            await self.containers.save(record)
        if entry.running:
            await self._refresh_network(net.id)
            await self._refresh_own(record)

    async def disconnect(self, network: str, container: str, force: bool) -> None:
        net = self.get(network)
        entry = self.containers.get(container)
        record = entry.record
        async with entry.lock:
            eps = [ep for ep in record.network_settings.endpoints if ep.network_id == net.id]
            if not eps and net.name not in self._wanted(record):
                raise FailedPrecondition(f"container {record.id} is not connected to network {net.name}")
            for ep in eps:
                await asyncio.to_thread(bridge.detach, ep.host_ifname)
                await asyncio.to_thread(self.ipam.release, net.id, record.id)
            record.network_settings.endpoints = [
                ep for ep in record.network_settings.endpoints if ep.network_id != net.id
            ]
            record.config.host.endpoints.pop(net.name, None)
            if self._mode(record.config) == net.name:
                record.config.host.left_mode_network = True
            await self.containers.save(record)
        await self._refresh_network(net.id)

    async def _refresh_own(self, record: Container) -> None:
        s = record.network_settings
        if s.hosts_path:
            await asyncio.to_thread(dns.update_hosts, Path(s.hosts_path).parent, self._dns_of(record))

    async def close(self) -> None:
        await self.releases.settled()
        # Stopping the daemon never stops a container: proxies go with this process, restore() rebinds them.
        for cid in list(self.proxies.proxies):
            await self.proxies.unpublish(cid)
        await self.resolvers.close()
