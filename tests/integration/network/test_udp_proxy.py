"""The UDP side of the published-port proxy, on loopback only: one flow (its own upstream socket) per client
address, replies routed back to the client that asked, idle flows expired and opened again on demand."""

from __future__ import annotations

import asyncio
import socket
import time

from services.daemon.network.portproxy import PortMapping, PortProxy


class _Echo(asyncio.DatagramProtocol):
    """Answers ``reply:<data>`` to the sender and records every source address it saw."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.sources: list[tuple[str, int]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sources.append(addr)
        assert self.transport is not None
        self.transport.sendto(b"reply:" + data, addr)


async def _ask(sock: socket.socket, port: int, data: bytes) -> bytes:
    loop = asyncio.get_running_loop()
    for _ in range(10):  # bounded retries: UDP may drop
        await loop.sock_sendto(sock, data, ("127.0.0.1", port))
        try:
            reply, source = await asyncio.wait_for(loop.sock_recvfrom(sock, 512), 0.5)
        except TimeoutError:
            continue
        assert source == ("127.0.0.1", port)  # answered from the published address
        return reply
    raise AssertionError(f"no reply to {data!r}")


async def _scenario() -> None:
    loop = asyncio.get_running_loop()
    transport, echo = await loop.create_datagram_endpoint(_Echo, local_addr=("127.0.0.1", 0))
    upstream = transport.get_extra_info("sockname")[1]
    proxy = PortProxy("udp-test", udp_idle_timeout=0.3)
    clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    try:
        started = await proxy.start([PortMapping("udp", "127.0.0.1", 0, "127.0.0.1", upstream)])
        port = started[0].host_port
        listener = proxy._udp[0]
        for c in clients:
            c.setblocking(False)
        # interleaved: every client gets the reply to its own datagram, never another's
        for round_ in range(3):
            for i, c in enumerate(clients):
                assert await _ask(c, port, f"c{i}-r{round_}".encode()) == f"reply:c{i}-r{round_}".encode()
        assert len(listener.flows) == 3
        assert len(set(echo.sources)) == 3  # one upstream socket (source port) per client, kept across rounds
        # idle flows go after the timeout (polled, bounded) ...
        deadline = time.monotonic() + 5
        while listener.flows and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert listener.flows == {}
        # ... and a client that speaks again gets a new flow and its answer
        assert await _ask(clients[0], port, b"again") == b"reply:again"
        assert len(listener.flows) == 1 and len(set(echo.sources)) == 4
    finally:
        await proxy.close()
        for c in clients:
            c.close()
        transport.close()
    assert proxy._udp == [] and proxy.mappings == []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", port))  # the listener is closed: the port is free


def test_udp_flows_per_client_with_idle_expiry() -> None:
    asyncio.run(asyncio.wait_for(_scenario(), 30))
