"""Docker's JSON shapes of networking: network objects, NetworkSettings, ports; and their request fields."""

from __future__ import annotations

from typing import Any

from services.apiserver.fields import string_list
from services.common.errors import InvalidArgument
from services.gen.skiff.daemon.v1 import (
    Container,
    ContainerConfig,
    EndpointConfig,
    EndpointSettings,
    Network,
    NetworkInspect,
    PortBinding,
)


def _port_key(key: str) -> str:
    return key if "/" in key else f"{key}/tcp"


def endpoint_config(body: Any) -> EndpointConfig:
    if not isinstance(body, dict):
        return EndpointConfig()
    ipam = body.get("IPAMConfig") or {}
    if not isinstance(ipam, dict):
        raise InvalidArgument("invalid IPAMConfig: expected an object")
    return EndpointConfig(ipv4_address=str(ipam.get("IPv4Address") or ""),
                          aliases=string_list(body.get("Aliases"), "Aliases", allow_single=False))


def apply_request(body: dict[str, Any], host_body: dict[str, Any], config: ContainerConfig) -> None:
    """The networking fields of POST /containers/create into the daemon's config."""
    host = config.host
    bindings = host_body.get("PortBindings") or {}
    if not isinstance(bindings, dict):
        raise InvalidArgument("invalid PortBindings: expected an object")
    for key, values in bindings.items():
        if values is not None and not isinstance(values, list):
            raise InvalidArgument(f"invalid PortBindings[{key!r}]: expected a list of bindings")
        for v in values or [{}]:
            if not isinstance(v, dict):
                raise InvalidArgument(f"invalid PortBindings[{key!r}]: expected objects with HostIp/HostPort")
            host.port_bindings.append(PortBinding(container_port=_port_key(key), host_ip=str(v.get("HostIp") or ""),
                                                  host_port=str(v.get("HostPort") or "")))
    host.publish_all_ports = bool(host_body.get("PublishAllPorts"))
    host.dns = string_list(host_body.get("Dns"), "Dns", allow_single=False)
    host.dns_search = string_list(host_body.get("DnsSearch"), "DnsSearch", allow_single=False)
    host.dns_options = string_list(host_body.get("DnsOptions"), "DnsOptions", allow_single=False)
    host.extra_hosts = string_list(host_body.get("ExtraHosts"), "ExtraHosts", allow_single=False)
    exposed = body.get("ExposedPorts") or {}
    if not isinstance(exposed, dict):
        raise InvalidArgument("invalid ExposedPorts: expected an object")
    config.exposed_ports = [_port_key(k) for k in exposed] + [
        b.container_port for b in host.port_bindings if b.container_port not in exposed]
    config.domainname = str(body.get("Domainname") or "")
    endpoints = (body.get("NetworkingConfig") or {}).get("EndpointsConfig") or {}
    if isinstance(endpoints, dict):
        for name, ep in endpoints.items():
            if ep is not None and not isinstance(ep, dict):
                raise InvalidArgument(f"invalid EndpointsConfig[{name!r}]: expected an object")
            if name == "default":  # the CLI's name for the network of NetworkMode "default"
                name = "bridge" if host.network_mode in ("", "default") else host.network_mode
            host.endpoints[name] = endpoint_config(ep)


def network_mode(c: Container) -> str:
    mode = c.config.host.network_mode
    return "bridge" if mode in ("", "default") else mode


def _ports(c: Container) -> dict[str, Any]:
    ports: dict[str, Any] = {p: None for p in c.config.exposed_ports}
    for b in c.network_settings.ports:
        ports.setdefault(b.container_port, None)
        ports[b.container_port] = [*(ports[b.container_port] or []), {"HostIp": b.host_ip, "HostPort": b.host_port}]
    return ports


def _endpoint(ep: EndpointSettings | None, net_id: str = "", aliases: list[str] | None = None) -> dict[str, Any]:
    return {
        "IPAMConfig": None, "Links": None, "Aliases": (list(ep.aliases) if ep else aliases) or None,
        "MacAddress": ep.mac_address if ep else "", "DriverOpts": None,
        "NetworkID": ep.network_id if ep else net_id, "EndpointID": ep.endpoint_id if ep else "",
        "Gateway": ep.gateway if ep else "", "IPAddress": ep.ip_address if ep else "",
        "IPPrefixLen": ep.prefix_len if ep else 0, "IPv6Gateway": "", "GlobalIPv6Address": "",
        "GlobalIPv6PrefixLen": 0, "DNSNames": None,
    }


def network_settings(c: Container) -> dict[str, Any]:
    s = c.network_settings
    eps = {ep.network_name: ep for ep in s.endpoints}
    networks: dict[str, Any] = {}
    mode = network_mode(c)
    if not mode.startswith("container:"):
        wanted = [mode] + [n for n in c.config.host.endpoints if n != mode]
        for name in wanted:
            cfg = c.config.host.endpoints.get(name)
            networks[name] = _endpoint(eps.get(name), aliases=list(cfg.aliases) if cfg else None)
        for name, ep in eps.items():
            networks.setdefault(name, _endpoint(ep))
    first = s.endpoints[0] if s.endpoints else None
    return {
        "Bridge": "", "SandboxID": c.id if s.sandbox_key else "", "SandboxKey": s.sandbox_key,
        "HairpinMode": False, "LinkLocalIPv6Address": "", "LinkLocalIPv6PrefixLen": 0,
        "Ports": _ports(c), "SecondaryIPAddresses": None, "SecondaryIPv6Addresses": None,
        "EndpointID": first.endpoint_id if first else "", "Gateway": first.gateway if first else "",
        "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0, "IPAddress": first.ip_address if first else "",
        "IPPrefixLen": first.prefix_len if first else 0, "IPv6Gateway": "",
        "MacAddress": first.mac_address if first else "", "Networks": networks,
    }


def host_config_fields(c: Container) -> dict[str, Any]:
    host = c.config.host
    bindings: dict[str, Any] = {}
    for b in host.port_bindings:
        bindings.setdefault(b.container_port, []).append({"HostIp": b.host_ip, "HostPort": b.host_port})
    return {
        "NetworkMode": network_mode(c), "PortBindings": bindings, "PublishAllPorts": host.publish_all_ports,
        "Dns": list(host.dns), "DnsSearch": list(host.dns_search), "DnsOptions": list(host.dns_options),
        "ExtraHosts": list(host.extra_hosts) or None,
    }


def summary_ports(c: Container) -> list[dict[str, Any]]:
    out = []
    for b in c.network_settings.ports:
        port, _, proto = b.container_port.partition("/")
        out.append({"IP": b.host_ip, "PrivatePort": int(port), "PublicPort": int(b.host_port), "Type": proto})
    return out


def summary_networks(c: Container) -> dict[str, Any]:
    return {ep.network_name: _endpoint(ep) for ep in c.network_settings.endpoints}


def network_json(n: Network, members: NetworkInspect | None = None) -> dict[str, Any]:
    config = [{"Subnet": n.subnet, "Gateway": n.gateway}] if n.subnet else []
    containers: dict[str, Any] = {}
    if members is not None:
        for m in members.containers:
            ep = m.endpoint
            containers[m.container_id] = {
                "Name": m.name, "EndpointID": ep.endpoint_id, "MacAddress": ep.mac_address,
                "IPv4Address": f"{ep.ip_address}/{ep.prefix_len}", "IPv6Address": ""}
    return {
        "Name": n.name, "Id": n.id, "Created": n.created, "Scope": n.scope or "local", "Driver": n.driver,
        "EnableIPv6": False, "IPAM": {"Driver": "default", "Options": None if n.driver != "bridge" else {},
                                     "Config": config},
        "Internal": n.internal, "Attachable": n.attachable, "Ingress": False,
        "ConfigFrom": {"Network": ""}, "ConfigOnly": False, "Containers": containers,
        "Options": dict(n.options), "Labels": dict(n.labels),
    }
