"""Real traffic between busybox containers, namespaces and the host's loopback, all made by the test."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path

import pytest

from services.common.errors import Conflict
from services.daemon.network import netns
from services.daemon.network.dns import ContainerDns, HostEntry
from services.daemon.network.portproxy import PortMapping
from tests.integration.network.conftest import World, wait_until

pytestmark = pytest.mark.root


def http_get(world: World, cid: str, host: str) -> str:
    """An HTTP GET from inside ``cid`` with busybox nc (Debian's static busybox wget segfaults)."""
    script = f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {host} 80"
    r = world.rt.cmd("exec", cid, "sh", "-c", script, timeout=15)
    return r.stdout if r.returncode == 0 else ""


def tcp_probe(path: Path, ip: str, port: int, timeout: float = 1.0) -> bool:
    """A connect from inside the namespace at ``path``: True when it is accepted."""

    def attempt() -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as s:
            s.settimeout(timeout)
            try:
                s.connect((ip, port))
                return True
            except OSError:
                return False

    return netns.run_in_netns(path, attempt)


def test_two_containers_reach_each_other_by_ip_and_name(world: World) -> None:
    net = world.network("a")
    cid_web, cid_cli = f"skiff-t-{world.uid}-web", f"skiff-t-{world.uid}-cli"
    ns_web, ns_cli = world.container_netns(cid_web), world.container_netns(cid_cli)
    ep_web, ep_cli = world.endpoint(net, cid_web, ns_web), world.endpoint(net, cid_cli, ns_cli)
    web_ip, cli_ip = str(ep_web.address.ip), str(ep_cli.address.ip)
    assert web_ip != cli_ip
    token = f"hello-{world.uid}"
    world.start(
        ["httpd", "-f", "-p", "80", "-h", "/www"],
        cid=cid_web,
        netns_path=ns_web,
        www=token,
        dns=ContainerDns(hostname="web", address=web_ip, peers=(HostEntry(cli_ip, (cid_cli, "client")),)),
    )
    world.start(
        ["sleep", "60"],
        cid=cid_cli,
        netns_path=ns_cli,
        dns=ContainerDns(hostname="cli", address=cli_ip, peers=(HostEntry(web_ip, (cid_web, "web-alias")),)),
    )
    assert wait_until(lambda: token in http_get(world, cid_cli, web_ip), 10, 0.05), "by IP"
    assert token in http_get(world, cid_cli, "web-alias"), "by name (hosts file)"
    hosts = world.rt.cmd("exec", cid_cli, "cat", "/etc/hosts").ok().stdout
    assert f"{cli_ip}\tcli" in hosts and "127.0.0.1\tlocalhost" in hosts
    # The UTS hostname comes from config.json (the daemon's part); the file is ours.
    assert world.rt.cmd("exec", cid_cli, "cat", "/etc/hostname").ok().stdout == "cli\n"
    assert "nameserver" in world.rt.cmd("exec", cid_cli, "cat", "/etc/resolv.conf").ok().stdout


def test_isolation_between_bridges(world: World) -> None:
    net1, net2 = world.network("1"), world.network("2")
    cid = f"skiff-t-{world.uid}-srv"
    ns_srv = world.container_netns(cid)
    srv_ip = str(world.endpoint(net1, cid, ns_srv).address.ip)
    world.start(["nc", "-ll", "-p", "80", "-e", "cat"], cid=cid, netns_path=ns_srv)
    same = world.container_netns(f"{world.uid}-same")
    world.endpoint(net1, f"{world.uid}-same", same)
    other = world.container_netns(f"{world.uid}-other")
    world.endpoint(net2, f"{world.uid}-other", other)
    assert wait_until(lambda: tcp_probe(same, srv_ip, 80), 10, 0.05), "same bridge must connect"
    # A routed path exists (ip_forward is on, both bridges are on the host): only the rules stop it.
    assert not tcp_probe(other, srv_ip, 80, timeout=1.0), "another bridge must not connect"
    assert tcp_probe(other, str(net2.gateway), 1, timeout=1.0) is False  # its own gateway answers RST, not accept


def _udp_echo_in(path: Path, port: int, stop: threading.Event) -> threading.Thread:
    """A small UDP echo bound inside the namespace (busybox nc has no UDP mode)."""
    sock: socket.socket = netns.run_in_netns(
        path, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    )
    sock.settimeout(0.1)
    # The socket belongs to the namespace it was created in: bind and serve it from any thread.
    sock.bind(("0.0.0.0", port))

    def serve() -> None:
        deadline = time.monotonic() + 30
        with sock:
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    data, addr = sock.recvfrom(65536)
                except TimeoutError:
                    continue
                sock.sendto(data, addr)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_published_ports_tcp_and_udp_from_loopback(world: World) -> None:
    net = world.network("p")
    cid = f"skiff-t-{world.uid}-pub"
    path = world.container_netns(cid)
    ip = str(world.endpoint(net, cid, path).address.ip)
    token = f"published-{world.uid}"
    world.start(["httpd", "-f", "-p", "80", "-h", "/www"], cid=cid, netns_path=path, www=token)
    stop = threading.Event()
    echo = _udp_echo_in(path, 9999, stop)
    try:
        started = world.run(
            world.proxies.publish(
                cid,
                [PortMapping("tcp", "127.0.0.1", 0, ip, 80), PortMapping("udp", "127.0.0.1", 0, ip, 9999)],
            )
        )
        tcp_port, udp_port = started[0].host_port, started[1].host_port
        assert tcp_port > 0 and udp_port > 0

        async def http_get() -> str:
            reader, writer = await asyncio.open_connection("127.0.0.1", tcp_port)
            writer.write(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
            body = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            return body.decode(errors="replace")

        async def http_until_ok() -> str:
            deadline = time.monotonic() + 10
            text = ""
            while time.monotonic() < deadline:  # httpd may not be listening yet: poll, bounded
                text = await http_get()
                if token in text:
                    return text
                await asyncio.sleep(0.05)
            return text

        assert token in world.run(http_until_ok())

        def udp_roundtrip() -> bytes:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(1)
                for _ in range(5):  # UDP may drop: bounded retries
                    s.sendto(b"ping-" + world.uid.encode(), ("127.0.0.1", udp_port))
                    try:
                        return s.recv(100)
                    except TimeoutError:
                        continue
            return b""

        assert world.run(asyncio.to_thread(udp_roundtrip)) == b"ping-" + world.uid.encode()
        world.run(world.proxies.unpublish(cid))
        with socket.socket() as s:  # the port is free again: close released the listener
            # SO_REUSEADDR: the closed connection sits in TIME_WAIT; a live listener would still refuse.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", tcp_port))
            s.listen(1)
    finally:
        stop.set()
        echo.join(5)


def test_port_in_use_is_a_conflict_and_leaves_nothing(world: World) -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        first_port = free.getsockname()[1]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        busy_port = busy.getsockname()[1]
        wanted = [
            PortMapping("tcp", "127.0.0.1", first_port, "10.255.255.1", 80),
            PortMapping("tcp", "127.0.0.1", busy_port, "10.255.255.1", 81),
        ]
        with pytest.raises(Conflict, match=f"127.0.0.1:{busy_port}/tcp: port is already allocated"):
            world.run(world.proxies.publish("c-conflict", wanted))
    assert "c-conflict" not in world.proxies.proxies
    with socket.socket() as s:  # the first mapping's listener was closed, not left half-started
        s.bind(("127.0.0.1", first_port))
