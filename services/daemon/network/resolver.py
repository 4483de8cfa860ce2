"""The embedded DNS server of containers on user-defined networks: dockerd's 127.0.0.11.

Per container, a UDP socket is bound inside its network namespace to 127.0.0.11 on a free port, and
the namespace's nat table sends 127.0.0.11:53 there (OUTPUT DNAT; conntrack turns the answers back
into :53), so the container's own port 53 stays free for its own servers, as with dockerd. The daemon
serves the socket on its event loop: a name of a container that shares a user network with the asker
(its name, network aliases, short id, or an alias of the asker's Links) is answered from the daemon's
records; any other question goes to the external servers (the container's --dns, else the host's)
from the host's namespace, and their answer is relayed unchanged.

Why ``iptables-restore`` here: see firewall.py (no netlink interface for iptables rules); it runs on a
thread that joined the container's namespace, so only that namespace's nat table is replaced.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import struct
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import structlog

from services.common.errors import FailedPrecondition, Internal
from services.daemon.network import netns
from services.daemon.network.dns import link_aliases

log = structlog.get_logger(service="daemon")

ADDRESS = "127.0.0.11"
TIMEOUT = 10.0
UPSTREAM_TIMEOUT = 2.0
TTL = 600
QTYPE_A = 1
QTYPE_AAAA = 28
RCODE_SERVFAIL = 2
MAX_UDP = 4096

# (container id, lower-case name) -> (IPv4 addresses, IPv6 addresses), or None when the name is not one of ours
Lookup = Callable[[str, str], "tuple[list[str], list[str]] | None"]


@dataclass(frozen=True, slots=True)
class Question:
    qid: int
    flags: int
    name: str  # lower case, no trailing dot
    qtype: int
    end: int  # offset just past the (first) question


def parse_question(packet: bytes) -> Question | None:
    """The first question of a standard query, or None for anything else (answered by the upstream)."""
    if len(packet) < 12:
        return None
    qid, flags, qdcount = struct.unpack("!HHH", packet[:6])
    if flags & 0x8000 or (flags >> 11) & 0xF or qdcount != 1:
        return None
    labels, p = [], 12
    while True:
        if p >= len(packet):
            return None
        size = packet[p]
        if size == 0:
            p += 1
            break
        if size & 0xC0 or p + 1 + size > len(packet):
            return None
        labels.append(packet[p + 1 : p + 1 + size].decode("ascii", "replace"))
        p += 1 + size
    if p + 4 > len(packet):
        return None
    qtype, _qclass = struct.unpack("!HH", packet[p : p + 4])
    return Question(qid, flags, ".".join(labels).lower(), qtype, p + 4)


def answer(packet: bytes, q: Question, addresses: list[str]) -> bytes:
    """An authoritative answer to ``q`` with the records ``addresses`` (of q's type), NOERROR."""
    family = socket.AF_INET if q.qtype == QTYPE_A else socket.AF_INET6
    records = b""
    for address in addresses:
        data = socket.inet_pton(family, address)
        records += struct.pack("!HHHIH", 0xC00C, q.qtype, 1, TTL, len(data)) + data
    flags = 0x8000 | 0x0400 | (q.flags & 0x0100) | 0x0080  # QR, AA, RD copied, RA
    header = struct.pack("!HHHHHH", q.qid, flags, 1, len(addresses), 0, 0)
    return header + packet[12 : q.end] + records


def failure(packet: bytes, q: Question, rcode: int) -> bytes:
    flags = 0x8000 | (q.flags & 0x0100) | 0x0080 | rcode
    return struct.pack("!HHHHHH", q.qid, flags, 1, 0, 0, 0) + packet[12 : q.end]


def _nat_rules(port: int) -> str:
    return (
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n"
        f"-A OUTPUT -d {ADDRESS}/32 -p udp -m udp --dport 53 -j DNAT --to-destination {ADDRESS}:{port}\n"
        "COMMIT\n"
    )


def _bind_inside(path: Path) -> socket.socket:
    """On a thread inside the container's namespace: the socket, and the nat table pointing :53 at it."""
    binary = shutil.which("iptables-restore")
    if binary is None:
        raise FailedPrecondition("iptables-restore is not installed: the embedded DNS server needs it")

    def inside() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            sock.bind((ADDRESS, 0))
            port = sock.getsockname()[1]
            try:
                done = subprocess.run(
                    [binary, "-w", "5"], input=_nat_rules(port), capture_output=True, text=True, timeout=TIMEOUT
                )
            except subprocess.TimeoutExpired:
                raise Internal(f"iptables-restore in {path}: no answer within {TIMEOUT:.0f}s") from None
            if done.returncode != 0:
                raise Internal(f"iptables-restore in {path}: {done.stderr.strip() or f'exit {done.returncode}'}")
            sock.setblocking(False)
            return sock
        except BaseException:
            sock.close()
            raise

    return netns.run_in_netns(path, inside)


class _Server(asyncio.DatagramProtocol):
    def __init__(self, container_id: str, lookup: Lookup, upstream: tuple[str, ...]) -> None:
        self.container_id = container_id
        self.lookup = lookup
        self.upstream = upstream
        self.transport: asyncio.DatagramTransport | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        task = asyncio.get_running_loop().create_task(self._reply(data, addr))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _reply(self, data: bytes, addr: tuple[str, int]) -> None:
        q = parse_question(data)
        reply: bytes | None = None
        if q is not None:
            found = self.lookup(self.container_id, q.name)
            if found is not None:
                # One of ours: only our records, never the outside's (an empty NOERROR for other types).
                v4, v6 = found
                reply = answer(data, q, v4 if q.qtype == QTYPE_A else v6 if q.qtype == QTYPE_AAAA else [])
        if reply is None:
            reply = await self._forward(data)
            if reply is None and q is not None:
                reply = failure(data, q, RCODE_SERVFAIL)
        if reply is not None and self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(reply, addr)

    async def _forward(self, data: bytes) -> bytes | None:
        loop = asyncio.get_running_loop()
        for server in self.upstream:
            family = socket.AF_INET6 if ":" in server else socket.AF_INET
            with socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.setblocking(False)
                try:
                    await loop.sock_sendto(s, data, (server, 53))
                    return await asyncio.wait_for(loop.sock_recv(s, MAX_UDP), UPSTREAM_TIMEOUT)
                except (OSError, TimeoutError):
                    continue
        return None

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        for task in self.tasks:
            task.cancel()


class Resolvers:
    """The embedded DNS servers of this daemon's containers, by container id."""

    def __init__(self, lookup: Lookup) -> None:
        self.lookup = lookup
        self.servers: dict[str, _Server] = {}

    async def start(self, container_id: str, netns_path: Path, upstream: tuple[str, ...]) -> None:
        await self.stop(container_id)
        sock = await asyncio.to_thread(_bind_inside, netns_path)
        try:
            server = _Server(container_id, self.lookup, upstream)
            await asyncio.get_running_loop().create_datagram_endpoint(lambda: server, sock=sock)
        except BaseException:
            sock.close()
            raise
        self.servers[container_id] = server

    async def stop(self, container_id: str) -> None:
        server = self.servers.pop(container_id, None)
        if server is not None:
            server.close()

    async def close(self) -> None:
        for container_id in list(self.servers):
            await self.stop(container_id)


class _Networking(Protocol):
    """What the lookup reads of daemon/networking.py's Networking."""

    networks: dict[str, Any]
    containers: Any  # records.ContainerRecords

    def members(self, network_id: str) -> list[tuple[Any, Any]]: ...


def lookup_in(networking: _Networking, container_id: str, name: str) -> tuple[list[str], list[str]] | None:
    """Docker's names on the user networks ``container_id`` is on: every member's name, aliases and short
    id, and the aliases of the asker's own Links; None when ``name`` is none of them."""
    entry = networking.containers.entries.get(container_id)
    if entry is None:
        return None
    v4: list[str] = []
    v6: list[str] = []
    found = False
    for ep in entry.record.network_settings.endpoints:
        net = networking.networks.get(ep.network_id)
        if net is None or net.name == "bridge":
            continue  # no name resolution on the default bridge (dockerd's rule)
        links = link_aliases(ep.config.links if ep.config else ())
        for other, oep in networking.members(ep.network_id):
            names = (other.record.name, *oep.aliases, other.record.id[:12], *links.get(other.record.name, ()))
            if name in (n.lower() for n in names):
                found = True
                v4 += [oep.ip_address] if oep.ip_address else []
                v6 += [oep.global_ipv6_address] if oep.global_ipv6_address else []
    return (v4, v6) if found else None
