"""Published ports (``-p``) through an asyncio userland proxy: TCP splices, UDP per-client flows.

Every listening socket of a container is bound *before* any is served: a port in use raises
``Conflict`` and closes what was bound, so a container never starts half-published.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

from services.common.errors import Conflict, InvalidArgument

CHUNK = 256 * 1024  # one read; drain() keeps at most the transport's high-water mark queued per side
UDP_IDLE_TIMEOUT = 30.0
UDP_MAX_FLOWS = 1024
CONNECT_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class PortMapping:
    proto: str  # "tcp" or "udp"
    host_ip: str
    host_port: int  # 0: the kernel picks one; the started mapping carries the real port
    container_ip: str
    container_port: int


def _bind(mapping: PortMapping) -> socket.socket:
    if mapping.proto not in ("tcp", "udp"):
        raise InvalidArgument(f"protocol {mapping.proto} is not supported (tcp or udp)")
    family = socket.AF_INET6 if ":" in mapping.host_ip else socket.AF_INET
    kind = socket.SOCK_STREAM if mapping.proto == "tcp" else socket.SOCK_DGRAM
    sock = socket.socket(family, kind | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
    try:
        if mapping.proto == "tcp":
            # Lets a restarted daemon rebind while old connections sit in TIME_WAIT; still fails on a live listener.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((mapping.host_ip, mapping.host_port))
        if mapping.proto == "tcp":
            sock.listen(512)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise Conflict(
                f"cannot publish {mapping.host_ip}:{mapping.host_port}/{mapping.proto}: port is already allocated"
            ) from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise InvalidArgument(f"cannot publish on {mapping.host_ip}: no such address on this host") from None
        raise
    return sock


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()  # half-close: the other direction may still be talking
    except (ConnectionError, OSError):
        writer.transport.abort()


class _UdpFlow(asyncio.DatagramProtocol):
    """One client's flow: a connected socket to the container; replies go back through the listener."""

    def __init__(self, proxy: _UdpListener, client: tuple[str, int]) -> None:
        self.proxy = proxy
        self.client = client
        self.transport: asyncio.DatagramTransport | None = None
        self.last = asyncio.get_running_loop().time()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.last = asyncio.get_running_loop().time()
        if self.proxy.transport is not None:
            self.proxy.transport.sendto(data, self.client)

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP unreachable from the container: the client's own timeout tells it

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class _UdpListener(asyncio.DatagramProtocol):
    def __init__(self, mapping: PortMapping, idle_timeout: float) -> None:
        self.mapping = mapping
        self.idle_timeout = idle_timeout
        self.transport: asyncio.DatagramTransport | None = None
        self.flows: dict[tuple[str, int], _UdpFlow] = {}
        self.pending: dict[tuple[str, int], list[bytes]] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        # The socket is really closed only now, a loop iteration after transport.close(): the port is free.
        if not self.closed.done():
            self.closed.set_result(None)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        flow = self.flows.get(addr)
        if flow is not None and flow.transport is not None:
            flow.last = asyncio.get_running_loop().time()
            flow.transport.sendto(data)
            return
        if addr in self.pending:
            if len(self.pending[addr]) < 64:  # bounded while the flow's socket is being made
                self.pending[addr].append(data)
            return
        if len(self.flows) + len(self.pending) >= UDP_MAX_FLOWS:
            return  # dropped, as a full conntrack table would
        self.pending[addr] = [data]
        task = asyncio.get_running_loop().create_task(self._open(addr))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _open(self, addr: tuple[str, int]) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, flow = await loop.create_datagram_endpoint(
                lambda: _UdpFlow(self, addr), remote_addr=(self.mapping.container_ip, self.mapping.container_port)
            )
        except OSError:
            self.pending.pop(addr, None)
            return
        self.flows[addr] = flow
        for data in self.pending.pop(addr, []):
            assert flow.transport is not None
            flow.transport.sendto(data)

    def expire(self) -> None:
        now = asyncio.get_running_loop().time()
        for addr, flow in list(self.flows.items()):
            if now - flow.last > self.idle_timeout:
                flow.close()
                del self.flows[addr]

    def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for flow in self.flows.values():
            flow.close()
        self.flows.clear()
        if self.transport is not None:
            self.transport.close()


@dataclass(slots=True)
class PortProxy:
    """The published ports of one container. ``start`` binds all or none; ``close`` releases everything."""

    container_id: str
    udp_idle_timeout: float = UDP_IDLE_TIMEOUT
    mappings: list[PortMapping] = field(default_factory=list)
    _servers: list[asyncio.Server] = field(default_factory=list)
    _udp: list[_UdpListener] = field(default_factory=list)
    _conns: set[asyncio.Task[None]] = field(default_factory=set)
    _sweeper: asyncio.Task[None] | None = None

    async def start(self, wanted: list[PortMapping]) -> list[PortMapping]:
        if self._servers or self._udp:
            raise Conflict(f"ports of container {self.container_id} are already published")
        socks: list[socket.socket] = []
        try:
            for mapping in wanted:
                socks.append(_bind(mapping))
        except BaseException:
            for s in socks:
                s.close()
            raise
        loop = asyncio.get_running_loop()
        started: list[PortMapping] = []
        try:
            for mapping, sock in zip(wanted, socks, strict=True):
                real = replace(mapping, host_port=sock.getsockname()[1])
                if mapping.proto == "tcp":
                    self._servers.append(await asyncio.start_server(self._tcp_handler(real), sock=sock))
                else:
                    _, listener = await loop.create_datagram_endpoint(
                        lambda m=real: _UdpListener(m, self.udp_idle_timeout), sock=sock
                    )
                    self._udp.append(listener)
                started.append(real)
        except BaseException:
            await self.close()
            for s in socks:
                s.close()
            raise
        if self._udp:
            self._sweeper = loop.create_task(self._sweep())
        self.mappings = started
        return started

    def _tcp_handler(
        self, mapping: PortMapping
    ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._conns.add(task)
            try:
                try:
                    up_r, up_w = await asyncio.wait_for(
                        asyncio.open_connection(mapping.container_ip, mapping.container_port, limit=CHUNK),
                        CONNECT_TIMEOUT,
                    )
                except (TimeoutError, OSError):
                    writer.transport.abort()  # a reset, as Docker's proxy gives when the container is not listening
                    return
                try:
                    await asyncio.gather(_pipe(reader, up_w), _pipe(up_r, writer))
                finally:
                    up_w.close()
            except asyncio.CancelledError:
                # close() ends the connection. Python 3.11's server callback asks a finished handler
                # for its exception without checking whether it was cancelled, and logs the
                # CancelledError that raises as an error: end normally instead.
                return
            finally:
                writer.close()
                self._conns.discard(task)

        return handle

    async def _sweep(self) -> None:
        interval = max(0.05, min(self.udp_idle_timeout / 2, 5.0))
        while True:
            await asyncio.sleep(interval)
            for listener in self._udp:
                listener.expire()

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        for server in self._servers:
            server.close()
        for listener in self._udp:
            listener.close()
        if self._udp:
            # close() returns with the ports free: a restart that publishes the same port again never races
            # the listener's socket still being open (EADDRINUSE, "port is already allocated").
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*(u.closed for u in self._udp)), 5)
        for task in list(self._conns):
            task.cancel()
        if self._conns:
            await asyncio.gather(*self._conns, return_exceptions=True)
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 5)
        self._servers.clear()
        self._udp.clear()
        self.mappings = []


@dataclass(slots=True)
class ProxyRegistry:
    """Every container's proxy in this daemon, by container id (reconciliation closes the strays)."""

    proxies: dict[str, PortProxy] = field(default_factory=dict)

    async def publish(self, container_id: str, wanted: list[PortMapping]) -> list[PortMapping]:
        if container_id in self.proxies:
            raise Conflict(f"ports of container {container_id} are already published")
        proxy = PortProxy(container_id)
        started = await proxy.start(wanted)
        self.proxies[container_id] = proxy
        return started

    async def unpublish(self, container_id: str) -> None:
        proxy = self.proxies.pop(container_id, None)
        if proxy is not None:
            await proxy.close()

    async def close_all_except(self, live: set[str]) -> list[str]:
        gone = [cid for cid in self.proxies if cid not in live]
        for cid in gone:
            await self.unpublish(cid)
        return gone
