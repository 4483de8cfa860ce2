"""Docker's JSON shapes of networking: network objects, NetworkSettings, ports; and their request fields."""

from __future__ import annotations

from typing import Any

from services.common.errors import InvalidArgument
from services.dockermodel.fields import string_list
from services.gen.skiff.daemon.v1 import (
    Container,
    ContainerConfig,
    CreateNetworkRequest,
    EndpointConfig,
    EndpointSettings,
    HostConfig,
    IpamPool,
    Network,
    NetworkInspect,
    PortBinding,
    State,
)


def _port_key(key: str) -> str:
    return key if "/" in key else f"{key}/tcp"


def endpoint_config(body: Any) -> EndpointConfig:
    if not isinstance(body, dict):
        return EndpointConfig()
    ipam = body.get("IPAMConfig") or {}
    if not isinstance(ipam, dict):
        raise InvalidArgument("invalid IPAMConfig: expected an object")
    driver_opts = body.get("DriverOpts") or {}
    if not isinstance(driver_opts, dict):
        raise InvalidArgument("invalid DriverOpts: expected an object")
    return EndpointConfig(ipv4_address=str(ipam.get("IPv4Address") or ""),
                          ipv6_address=str(ipam.get("IPv6Address") or ""),
                          link_local_ips=string_list(ipam.get("LinkLocalIPs"), "LinkLocalIPs", allow_single=False),
                          aliases=string_list(body.get("Aliases"), "Aliases", allow_single=False),
                          links=string_list(body.get("Links"), "Links", allow_single=False),
                          mac_address=str(body.get("MacAddress") or ""),
                          driver_opts={str(k): str(v) for k, v in driver_opts.items()})


def _string_map(value: Any, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgument(f"invalid {what}: expected an object")
    return {str(k): str(v) for k, v in value.items()}


def create_request(body: dict[str, Any]) -> CreateNetworkRequest:
    """POST /networks/create's body (IPAM.Config entries in full, EnableIPv6 or its driver option)."""
    ipam = body.get("IPAM") or {}
    if not isinstance(ipam, dict) or not isinstance(ipam.get("Config") or [], list):
        raise InvalidArgument("invalid IPAM: expected an object with a Config list")
    pools = []
    for entry in ipam.get("Config") or []:
        if not isinstance(entry, dict):
            raise InvalidArgument("invalid IPAM.Config: expected objects")
        pools.append(IpamPool(subnet=str(entry.get("Subnet") or ""), ip_range=str(entry.get("IPRange") or ""),
                              gateway=str(entry.get("Gateway") or ""),
                              aux_addresses=_string_map(entry.get("AuxiliaryAddresses"), "AuxiliaryAddresses")))
    options = _string_map(body.get("Options"), "Options")
    ipv6 = body.get("EnableIPv6")
    if ipv6 is None:
        ipv6 = options.pop("com.docker.network.enable_ipv6", "false").lower() in ("1", "t", "true")
    return CreateNetworkRequest(
        name=str(body.get("Name") or ""), driver=str(body.get("Driver") or ""), internal=bool(body.get("Internal")),
        attachable=bool(body.get("Attachable")), labels=_string_map(body.get("Labels"), "Labels"), options=options,
        check_duplicate=bool(body.get("CheckDuplicate")), enable_ipv6=bool(ipv6), ipam=pools,
        ipam_driver=str(ipam.get("Driver") or ""), ipam_options=_string_map(ipam.get("Options"), "IPAM.Options"))


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
    _container_mac(str(body.get("MacAddress") or ""), host)


def _container_mac(mac: str, host: HostConfig) -> None:
    """The container-wide Config.MacAddress goes to the endpoint of its NetworkMode's network (as dockerd does)."""
    if not mac:
        return
    mode = "bridge" if host.network_mode in ("", "default") else host.network_mode
    if mode in ("host", "none") or mode.startswith("container:"):
        raise InvalidArgument("conflicting options: mac-address and the network mode")
    ep = host.endpoints.setdefault(mode, EndpointConfig())
    if ep.mac_address and ep.mac_address.lower() != mac.lower():
        raise InvalidArgument("the container-wide MAC address must match the endpoint-specific MAC address for the "
                              "main network, or be left empty")
    ep.mac_address = mac


def network_mode(c: Container) -> str:
    mode = c.config.host.network_mode
    return "bridge" if mode in ("", "default") else mode


def _live(c: Container) -> bool:
    """A container with its network up: dockerd shows ports only then (a stopped one's are released)."""
    return c.state.status in (State.RUNNING, State.PAUSED)


def _ports(c: Container) -> dict[str, Any]:
    if not _live(c):
        return {}
    ports: dict[str, Any] = {p: None for p in c.config.exposed_ports}
    for b in c.network_settings.ports:
        ports.setdefault(b.container_port, None)
        ports[b.container_port] = [*(ports[b.container_port] or []), {"HostIp": b.host_ip, "HostPort": b.host_port}]
    return ports


def _ipam_config(cfg: EndpointConfig | None) -> dict[str, Any] | None:
    if cfg is None:
        return None
    shown = {"IPv4Address": cfg.ipv4_address, "IPv6Address": cfg.ipv6_address, "LinkLocalIPs": list(cfg.link_local_ips)}
    return {k: v for k, v in shown.items() if v} or None


def _endpoint(ep: EndpointSettings | None, cfg: EndpointConfig | None = None) -> dict[str, Any]:
    """One entry of NetworkSettings.Networks: the live endpoint if any, and what the create or connect asked."""
    if ep is not None and ep.config is not None and cfg is None:
        cfg = ep.config
    return {
        "IPAMConfig": _ipam_config(cfg), "Links": (list(cfg.links) if cfg else None) or None,
        "Aliases": (list(ep.aliases) if ep else list(cfg.aliases) if cfg else None) or None,
        "MacAddress": ep.mac_address if ep else (cfg.mac_address if cfg else ""),
        "DriverOpts": (dict(cfg.driver_opts) if cfg else None) or None,
        "NetworkID": ep.network_id if ep else "", "EndpointID": ep.endpoint_id if ep else "",
        "Gateway": ep.gateway if ep else "", "IPAddress": ep.ip_address if ep else "",
        "IPPrefixLen": ep.prefix_len if ep else 0, "IPv6Gateway": ep.ipv6_gateway if ep else "",
        "GlobalIPv6Address": ep.global_ipv6_address if ep else "",
        "GlobalIPv6PrefixLen": ep.global_ipv6_prefix_len if ep else 0, "DNSNames": None,
    }


def network_settings(c: Container) -> dict[str, Any]:
    s = c.network_settings
    eps = {ep.network_name: ep for ep in s.endpoints}
    networks: dict[str, Any] = {}
    mode = network_mode(c)
    if not mode.startswith("container:"):
        # Disconnected from its mode's network: dockerd keeps NetworkMode but lists the network no more.
        wanted = [] if c.config.host.left_mode_network else [mode]
        wanted += [n for n in c.config.host.endpoints if n not in wanted]
        for name in wanted:
            networks[name] = _endpoint(eps.get(name), c.config.host.endpoints.get(name))
        for name, ep in eps.items():
            networks.setdefault(name, _endpoint(ep))
    first = s.endpoints[0] if s.endpoints else None
    return {
        "Bridge": "", "SandboxID": c.id if s.sandbox_key else "", "SandboxKey": s.sandbox_key,
        "HairpinMode": False, "LinkLocalIPv6Address": "", "LinkLocalIPv6PrefixLen": 0,
        "Ports": _ports(c), "SecondaryIPAddresses": None, "SecondaryIPv6Addresses": None,
        "EndpointID": first.endpoint_id if first else "", "Gateway": first.gateway if first else "",
        "GlobalIPv6Address": first.global_ipv6_address if first else "",
        "GlobalIPv6PrefixLen": first.global_ipv6_prefix_len if first else 0,
        "IPAddress": first.ip_address if first else "",
        "IPPrefixLen": first.prefix_len if first else 0, "IPv6Gateway": first.ipv6_gateway if first else "",
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
    """The list's Ports: each published binding, and each exposed port published nowhere (no IP, no PublicPort)."""
    out = []
    for key, bindings in _ports(c).items():
        port, _, proto = key.partition("/")
        if not bindings:
            out.append({"PrivatePort": int(port), "Type": proto})
        for b in bindings or []:
            out.append({"IP": b["HostIp"], "PrivatePort": int(port), "PublicPort": int(b["HostPort"] or 0),
                        "Type": proto})
    return out


def summary_networks(c: Container) -> dict[str, Any]:
    """As inspect's: a stopped container's networks too (without addresses), host and none by their names."""
    return network_settings(c)["Networks"]


def _ipam_entry(pool: IpamPool) -> dict[str, Any]:
    entry: dict[str, Any] = {"Subnet": pool.subnet}
    if pool.ip_range:
        entry["IPRange"] = pool.ip_range
    entry["Gateway"] = pool.gateway
    if pool.aux_addresses:
        entry["AuxiliaryAddresses"] = dict(pool.aux_addresses)
    return entry


def network_json(n: Network, members: NetworkInspect | None = None) -> dict[str, Any]:
    config = [_ipam_entry(p) for p in n.ipam] or ([{"Subnet": n.subnet, "Gateway": n.gateway}] if n.subnet else [])
    containers: dict[str, Any] = {}
    if members is not None:
        for m in members.containers:
            ep = m.endpoint
            v6 = f"{ep.global_ipv6_address}/{ep.global_ipv6_prefix_len}" if ep.global_ipv6_address else ""
            containers[m.container_id] = {
                "Name": m.name, "EndpointID": ep.endpoint_id, "MacAddress": ep.mac_address,
                "IPv4Address": f"{ep.ip_address}/{ep.prefix_len}", "IPv6Address": v6}
    return {
        "Name": n.name, "Id": n.id, "Created": n.created, "Scope": n.scope or "local", "Driver": n.driver,
        "EnableIPv6": n.enable_ipv6,
        "IPAM": {"Driver": "default", "Options": dict(n.ipam_options) or None, "Config": config},
        "Internal": n.internal, "Attachable": n.attachable, "Ingress": False,
        "ConfigFrom": {"Network": ""}, "ConfigOnly": False, "Containers": containers,
        "Options": dict(n.options), "Labels": dict(n.labels),
    }
