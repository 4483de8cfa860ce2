"""Legacy links (``--link name:alias``) on the default bridge, as dockerd 20.10 keeps them.

A link is registered at create (the container it names must exist; it is kept as
``<child's name>:<alias>`` in HostConfig.links); at each start of the linking container its
children must run on the default bridge, and each gives it dockerd's variables (``ALIAS_NAME``,
``ALIAS_PORT_...``, ``ALIAS_ENV_...``) and a hosts entry (the alias, the child's hostname and name).
``DELETE /containers/<parent>/<alias>?link=1`` takes one away. On a user network links belong to the
endpoint (networking), not here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.common.errors import Conflict, Internal, InvalidArgument, NotFound
from services.daemon.network.dns import HostEntry
from services.gen.skiff.daemon.v1 import Container, ContainerConfig

if TYPE_CHECKING:
    from services.daemon.records import ContainerRecords

BRIDGE = "bridge"


def legacy(config: ContainerConfig) -> bool:
    """Links are the daemon's (not the endpoint's) unless the container's mode is a user network."""
    mode = config.host.network_mode
    return mode in ("", "default", "bridge", "none", "host") or mode.startswith("container:")


def parse(link: str) -> tuple[str, str]:
    """``name:alias`` or ``name`` (the alias is then the name), leading slashes dropped (opts.ParseLink)."""
    name, _, alias = link.partition(":")
    name = name.strip("/")
    return name, (alias.strip("/") or name)


def register(records: ContainerRecords, config: ContainerConfig) -> None:
    """dockerd's registerLinks: each child must exist (a container sharing another's network stands for
    that one) and not use the host's network; kept by the child's name."""
    if not legacy(config):
        return
    kept: dict[str, str] = {}
    for link in config.host.links:
        name, alias = parse(link)
        try:
            child = records.get(name).record
            while child.config.host.network_mode.startswith("container:"):
                child = records.get(child.config.host.network_mode.partition(":")[2]).record
        except NotFound as exc:
            raise InvalidArgument(f"could not get container for {name}: {exc.message}") from None
        if child.config.host.network_mode == "host":
            raise InvalidArgument("conflicting options: host type networking can't be used with links. "
                                  "This would result in undefined behavior")
        kept.setdefault(alias, f"{child.name}:{alias}")  # dockerd ignores an alias already taken
    config.host.links = list(kept.values())


def link_names(records: ContainerRecords) -> dict[str, list[str]]:
    """dockerd's name registry: a linked container is also named ``/<parent>/<alias>`` (docker ps lists it)."""
    found: dict[str, list[str]] = {}
    for entry in records.entries.values():
        config = entry.record.config
        if not config.host.links or not legacy(config):
            continue
        for link in config.host.links:
            name, alias = parse(link)
            child = records.names.get(name)
            if child is not None:
                found.setdefault(child, []).append(f"/{entry.record.name}/{alias}")
    return found


def parents(records: ContainerRecords, child: Container) -> list[Container]:
    """The running containers that link ``child``: their hosts entry for it follows its address (dockerd's
    OptionParentUpdate when the child joins the bridge again)."""
    found = []
    for entry in records.entries.values():
        config = entry.record.config
        if entry.running and config.host.links and legacy(config) and \
                any(parse(link)[0] == child.name for link in config.host.links):
            found.append(entry.record)
    return found


def _bridge_ip(record: Container) -> str:
    for ep in record.network_settings.endpoints:
        if ep.network_name == BRIDGE:
            return ep.ip_address
    return ""


def _children(records: ContainerRecords, record: Container, strict: bool = True) -> list[tuple[str, Container]]:
    """(alias, child) of each link. ``strict``: a child that does not run on the bridge fails the start,
    as dockerd's does; else it is left out (a hosts file rewritten later)."""
    found = []
    for link in record.config.host.links:
        name, alias = parse(link)
        full = f"/{record.name}/{alias}"
        try:
            child = records.get(name)
        except NotFound:
            if not strict:
                continue
            raise Conflict(f"Cannot link to a non running container: /{name} AS {full}") from None
        if not strict:
            if _bridge_ip(child.record):  # on the bridge now (a child starting has its address before it runs)
                found.append((alias, child.record))
            continue
        if not child.running:
            raise Conflict(f"Cannot link to a non running container: /{child.record.name} AS {full}")
        if not _bridge_ip(child.record):
            raise Internal(f"container {child.record.id} not attached to default bridge network")
        found.append((alias, child.record))
    return found


def environment(records: ContainerRecords, record: Container) -> list[str]:
    """The links' variables (dockerd's setupLinkedContainers, links.Link.ToEnv); none off the bridge."""
    if not legacy(record.config) or not record.config.host.links or not _bridge_ip(record):
        return []
    env: list[str] = []
    for alias, child in _children(records, record):
        env += link_env(f"/{record.name}/{alias}", _bridge_ip(child), list(child.config.env),
                        list(child.config.exposed_ports))
    return env


def hosts(records: ContainerRecords, record: Container) -> list[HostEntry]:
    """The links' /etc/hosts entries: the alias, the child's hostname and (when not the alias) its name."""
    if not legacy(record.config) or not record.config.host.links or not _bridge_ip(record):
        return []
    entries = []
    for alias, child in _children(records, record, strict=False):
        names = [alias, child.config.hostname or child.id[:12]]
        if alias != child.name:
            names.append(child.name)
        entries.append(HostEntry(_bridge_ip(child), tuple(names)))
    return entries


def _port_key(port: str) -> tuple[int, bool]:
    number, _, proto = port.partition("/")
    return int(number), (proto or "tcp").lower() != "tcp"


def link_env(name: str, child_ip: str, child_env: list[str], exposed: list[str]) -> list[str]:
    """links.Link.ToEnv: the default (lowest) port, runs of contiguous ports, each port, the name and
    the child's variables (not HOME or PATH), under the alias upper-cased with ``-`` as ``_``."""
    alias = name.rsplit("/", 1)[-1].upper().replace("-", "_")
    ports = sorted((p if "/" in p else f"{p}/tcp" for p in exposed), key=_port_key)
    env: list[str] = []

    def split(port: str) -> tuple[str, str]:
        number, _, proto = port.partition("/")
        return number, proto

    if ports:
        number, proto = split(ports[0])
        env.append(f"{alias}_PORT={proto}://{child_ip}:{number}")
    i = 0
    while i < len(ports):
        j = i
        while j + 1 < len(ports) and int(split(ports[j + 1])[0]) == int(split(ports[j])[0]) + 1:
            j += 1
        if j > i:
            number, proto = split(ports[i])
            last_number, last_proto = split(ports[j])
            prefix = f"{alias}_PORT_{number}_{proto.upper()}"
            env += [f"{prefix}_START={proto}://{child_ip}:{number}", f"{prefix}_ADDR={child_ip}",
                    f"{prefix}_PROTO={proto}", f"{prefix}_PORT_START={number}",
                    f"{alias}_PORT_{number}_{last_proto.upper()}_END={last_proto}://{child_ip}:{last_number}",
                    f"{alias}_PORT_{number}_{last_proto.upper()}_PORT_END={last_number}"]
            i = j + 1
        else:
            i += 1
    for port in ports:
        number, proto = split(port)
        prefix = f"{alias}_PORT_{number}_{proto.upper()}"
        env += [f"{prefix}={proto}://{child_ip}:{number}", f"{prefix}_ADDR={child_ip}", f"{prefix}_PORT={number}",
                f"{prefix}_PROTO={proto}"]
    env.append(f"{alias}_NAME={name}")
    for item in child_env:
        key, sep, value = item.partition("=")
        if sep and key not in ("HOME", "PATH"):
            env.append(f"{alias}_ENV_{key}={value}")
    return env


def resolve(records: ContainerRecords, full_name: str) -> tuple[Container, str]:
    """``<parent>/<alias>`` as (the parent's record, the alias); NotFound as dockerd's name lookup."""
    parent_name, _, alias = full_name.strip("/").rpartition("/")
    if not parent_name:
        raise NotFound(f"No such container: {full_name}")
    try:
        parent = records.get(parent_name).record
    except NotFound:
        raise NotFound(f"No such container: {full_name}") from None
    if not any(parse(link)[1] == alias for link in parent.config.host.links) or not legacy(parent.config):
        raise NotFound(f"No such container: {full_name}")
    return parent, alias


async def unlink(records: ContainerRecords, full_name: str) -> None:
    """dockerd's rmLink: the parent no longer links the child under that alias."""
    parent, alias = resolve(records, full_name)
    entry = records.get(parent.id)
    async with entry.lock:
        entry.record.config.host.links = [link for link in entry.record.config.host.links
                                          if parse(link)[1] != alias]
        await records.save(entry.record)
