"""``/etc/hosts``, ``/etc/hostname`` and ``/etc/resolv.conf`` per container, as Docker writes them.

Name resolution between containers on a user-defined network is done with hosts files kept current
(no embedded DNS server): when a container joins or leaves a network, the daemon re-renders the hosts
file of every container on it. Files are rewritten *in place* (truncate and write), not renamed: a
bind-mounted file pins its inode, so a rename would never be seen inside a running container.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from services.common.errors import InvalidArgument

HOST_RESOLV_CONF = Path("/etc/resolv.conf")
FALLBACK_NAMESERVERS = ("8.8.8.8", "8.8.4.4")  # Docker's choice when the host only has loopback resolvers

LOCALHOST_LINES = (
    "127.0.0.1\tlocalhost",
    "::1\tlocalhost ip6-localhost ip6-loopback",
    "fe00::0\tip6-localnet",
    "ff00::0\tip6-mcastprefix",
    "ff02::1\tip6-allnodes",
    "ff02::2\tip6-allrouters",
)


@dataclass(frozen=True, slots=True)
class HostEntry:
    address: str
    names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ContainerDns:
    """What a container's three files are made of."""

    hostname: str
    address: str | None  # its address on its first network; None for --network none/host
    own_names: tuple[str, ...] = ()  # container name and aliases on that network, beside the hostname
    domainname: str = ""
    peers: tuple[HostEntry, ...] = ()  # other containers on the same user-defined networks
    extra_hosts: tuple[HostEntry, ...] = ()  # --add-host name:ip
    dns: tuple[str, ...] = ()  # --dns
    dns_search: tuple[str, ...] = ()
    dns_options: tuple[str, ...] = ()
    host_resolv_conf: Path = field(default=HOST_RESOLV_CONF)
    embedded: bool = False  # on a user network: nameserver 127.0.0.11 (the daemon's resolver, resolver.py)


def link_aliases(links: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """``Links`` of an endpoint (``container:alias``, or a bare name) as container name -> its aliases."""
    found: dict[str, tuple[str, ...]] = {}
    for link in links:
        name, _, alias = link.lstrip("/").partition(":")
        found[name] = (*found.get(name, ()), alias.lstrip("/") or name)
    return found


def parse_add_host(value: str) -> HostEntry:
    """``--add-host name:ip`` (the address may be IPv6, so split on the first colon)."""
    name, sep, address = value.partition(":")
    if not sep or not name:
        raise InvalidArgument(f"invalid --add-host `{value}`: want name:ip")
    try:
        ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        raise InvalidArgument(f"invalid --add-host `{value}`: `{address}` is not an IP address") from None
    return HostEntry(address.strip("[]"), (name,))


def render_hosts(c: ContainerDns) -> str:
    lines = list(LOCALHOST_LINES)
    for entry in c.extra_hosts:
        lines.append(f"{entry.address}\t{' '.join(entry.names)}")
    if c.address:
        fqdn = f"{c.hostname}.{c.domainname}" if c.domainname else ""
        names = [n for n in (fqdn, c.hostname, *c.own_names) if n]
        lines.append(f"{c.address}\t{' '.join(dict.fromkeys(names))}")
    for peer in c.peers:
        lines.append(f"{peer.address}\t{' '.join(dict.fromkeys(peer.names))}")
    return "\n".join(lines) + "\n"


def render_hostname(c: ContainerDns) -> str:
    return f"{c.hostname}\n"


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return False


def _resolv_parts(c: ContainerDns, keep_loopback: bool) -> tuple[list[str], list[str], list[str]]:
    """(nameservers, search, options): ``--dns`` and friends, else the host's file's."""
    try:
        host_lines = c.host_resolv_conf.read_text().splitlines()
    except FileNotFoundError:
        host_lines = []
    nameservers: list[str] = list(c.dns)
    search: list[str] = list(c.dns_search)
    options: list[str] = list(c.dns_options)
    for line in host_lines:
        words = line.split()
        if not words or words[0].startswith(("#", ";")):
            continue
        if words[0] == "nameserver" and len(words) > 1 and not c.dns:
            if keep_loopback or not _is_loopback(words[1]):
                nameservers.append(words[1])
        elif words[0] in ("search", "domain") and not c.dns_search:
            search.extend(words[1:])
        elif words[0] == "options" and not c.dns_options:
            options.extend(words[1:])
    if not nameservers:
        nameservers = list(FALLBACK_NAMESERVERS)
    return nameservers, search, options


def external_servers(c: ContainerDns) -> tuple[str, ...]:
    """Where the embedded resolver sends the questions it cannot answer (from the host's namespace, so a
    host's loopback resolver counts too)."""
    return tuple(_resolv_parts(c, keep_loopback=True)[0])


def render_resolv_conf(c: ContainerDns) -> str:
    """``--dns`` servers, or the host's file minus loopback nameservers (unreachable from the netns); on a
    user network the embedded resolver, with the servers it forwards to in a comment (as dockerd writes)."""
    nameservers, search, options = _resolv_parts(c, keep_loopback=False)
    out = []
    if c.embedded:
        out.append(f"# ExtServers: [{' '.join(external_servers(c))}]")
        nameservers = ["127.0.0.11"]
        options = [o for o in options if not o.startswith("ndots:")] + ["ndots:0"]
    out += [f"nameserver {ns}" for ns in nameservers]
    if search:
        out.append(f"search {' '.join(search)}")
    if options:
        out.append(f"options {' '.join(options)}")
    return "\n".join(out) + "\n"


def _write_in_place(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        data = text.encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        # No fsync: derived files, written anew at every start (a crash loses nothing to keep).
    finally:
        os.close(fd)


def write_files(folder: Path, c: ContainerDns) -> dict[str, Path]:
    """Write the three files into ``folder``; returns ``{"/etc/hosts": path, ...}`` for the bind mounts."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "/etc/hosts": (folder / "hosts", render_hosts(c)),
        "/etc/hostname": (folder / "hostname", render_hostname(c)),
        "/etc/resolv.conf": (folder / "resolv.conf", render_resolv_conf(c)),
    }
    for path, text in files.values():
        _write_in_place(path, text)
    return {dest: path for dest, (path, _) in files.items()}


def update_hosts(folder: Path, c: ContainerDns) -> None:
    """Re-render only the hosts file (a peer joined or left)."""
    _write_in_place(folder / "hosts", render_hosts(c))


def bind_mounts(files: dict[str, Path]) -> list[dict[str, object]]:
    """OCI ``mounts`` entries for the files, as the daemon adds them to config.json."""
    return [
        {"destination": dest, "type": "bind", "source": str(src), "options": ["rbind", "rprivate"]}
        for dest, src in files.items()
    ]


def peers_of(members: Iterable[tuple[str, str, tuple[str, ...]]], me: str) -> tuple[HostEntry, ...]:
    """Hosts entries of a network's members but ``me``: ``(container id, address, names)`` each."""
    return tuple(HostEntry(address, names) for cid, address, names in members if cid != me and names)
