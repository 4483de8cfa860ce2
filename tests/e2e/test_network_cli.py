"""Networking through the real docker CLI: published ports, user networks, connect/disconnect, port conflicts."""

from __future__ import annotations

import json
import secrets
import shutil
import socket
import time
from pathlib import Path

import docker
import pytest

from services.daemon.network import bridge
from tests.e2e.netstack import DNSD_IMAGE, dns_a_answers, dns_query, dnsd_archive
from tests.e2e.stack import Stack
from tests.e2e.test_docker_cli import cli

pytestmark = pytest.mark.skipif(shutil.which("docker") is None, reason="docker CLI not installed")


def ok(stack: Stack, *args: str) -> str:
    run = cli(stack, *args)
    assert run.returncode == 0, f"docker {' '.join(args)}: {run.stderr}"
    return run.stdout.strip()


def http_get(port: int, deadline: float, host: str = "127.0.0.1") -> bytes:
    """GET / on host:port until it answers (httpd starts after the container does)."""
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=2) as s:
                s.sendall(b"GET /index.html HTTP/1.0\r\n\r\n")
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
                if data:
                    return data
        except OSError as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"no answer on {host}:{port}: {last}")


def reaches(stack: Stack, container: str, target: str) -> bool:
    out = cli(stack, "exec", container, "ping", "-c1", "-W2", target).stdout
    return " 0% packet loss" in out


def owned_devices() -> set[str]:
    return {link.ifname for link in bridge.owned_links()}


def test_publish_tcp_udp_port_and_conflict(stack: Stack, client: docker.DockerClient) -> None:
    web = ok(
        stack,
        "run",
        "-d",
        "-p",
        "127.0.0.1::80",
        "busybox",
        "sh",
        "-c",
        "mkdir -p /www && echo hello-skiff > /www/index.html && exec httpd -f -p 80 -h /www",
    )
    info = json.loads(ok(stack, "inspect", web))[0]
    ports = info["NetworkSettings"]["Ports"]
    tcp_port = int(ports["80/tcp"][0]["HostPort"])
    assert ports["80/tcp"][0]["HostIp"] == "127.0.0.1"
    net = info["NetworkSettings"]["Networks"]["bridge"]
    assert net["IPAddress"] and net["Gateway"] and net["MacAddress"] and net["IPPrefixLen"] > 0
    assert f"127.0.0.1:{tcp_port}" in ok(stack, "port", web, "80")
    assert b"hello-skiff" in http_get(tcp_port, time.monotonic() + 15)
    # the same host port again: a clear error and no half-started container
    taken = cli(stack, "run", "-d", "--name", "clash", "-p", f"127.0.0.1:{tcp_port}:80", "busybox", "sleep", "30")
    assert taken.returncode != 0 and "already allocated" in taken.stderr, taken.stderr
    clash = json.loads(ok(stack, "inspect", "clash"))[0]
    assert clash["State"]["Running"] is False and clash["NetworkSettings"]["Networks"]["bridge"]["IPAddress"] == ""
    ok(stack, "rm", "-f", web, "clash")
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", tcp_port), timeout=2):
        pass


def test_user_networks_names_isolation_connect(stack: Stack, client: docker.DockerClient) -> None:
    tag = secrets.token_hex(3)
    a, b = f"neta-{tag}", f"netb-{tag}"
    ok(stack, "network", "create", a)
    ok(stack, "network", "create", "--subnet", f"10.{199}.{secrets.randbelow(250)}.0/24", b)
    names = ok(stack, "network", "ls", "--format", "{{.Name}}").split()
    assert {"bridge", "host", "none", a, b} <= set(names)
    ok(stack, "run", "-d", "--name", f"one-{tag}", "--network", a, "--network-alias", "web", "busybox", "sleep", "300")
    ok(
        stack,
        "run",
        "-d",
        "--name",
        f"two-{tag}",
        "--network",
        a,
        "--add-host",
        "extra.test:10.1.2.3",
        "--dns",
        "10.9.9.9",
        "busybox",
        "sleep",
        "300",
    )
    ok(stack, "run", "-d", "--name", f"three-{tag}", "--network", b, "busybox", "sleep", "300")
    assert reaches(stack, f"two-{tag}", f"one-{tag}")
    assert reaches(stack, f"two-{tag}", "web")
    hosts = ok(stack, "exec", f"two-{tag}", "cat", "/etc/hosts")
    assert "extra.test" in hosts
    assert "10.9.9.9" in ok(stack, "exec", f"two-{tag}", "cat", "/etc/resolv.conf")
    one_ip = json.loads(ok(stack, "inspect", f"one-{tag}"))[0]["NetworkSettings"]["Networks"][a]["IPAddress"]
    # isolation: three (on b) cannot reach one (on a)
    assert not reaches(stack, f"three-{tag}", one_ip)
    # connect live: three joins a and reaches one by name; disconnect takes it away again
    ok(stack, "network", "connect", a, f"three-{tag}")
    assert reaches(stack, f"three-{tag}", f"one-{tag}")
    inspect = json.loads(ok(stack, "network", "inspect", a))[0]
    assert len(inspect["Containers"]) == 3
    ok(stack, "network", "disconnect", a, f"three-{tag}")
    assert not reaches(stack, f"three-{tag}", one_ip)
    # --network container:<name> shares one's namespace
    shared = ok(stack, "run", "--rm", "--network", f"container:one-{tag}", "busybox", "ip", "-4", "addr")
    assert one_ip in shared
    busy = cli(stack, "network", "rm", a)
    assert busy.returncode != 0
    ok(stack, "rm", "-f", f"one-{tag}", f"two-{tag}", f"three-{tag}")
    ok(stack, "network", "rm", a)
    assert b in ok(stack, "network", "prune", "-f")
    devices = owned_devices()
    assert not any(d.startswith("veth") for d in devices if d in devices and "skiff-ep" in d)


def test_none_and_host_modes(stack: Stack, client: docker.DockerClient) -> None:
    out = ok(stack, "run", "--rm", "--network", "none", "busybox", "ip", "-o", "link")
    assert "lo" in out and "eth0" not in out
    out = ok(stack, "run", "--rm", "--network", "host", "busybox", "cat", "/proc/net/dev")
    assert "lo:" in out


def ask_dns(server: tuple[str, int], name: str, deadline: float, sock: socket.socket | None = None) -> list[str]:
    """An A query for ``name`` over UDP, sent again every 0.3 s until its answer comes (the server may still
    be starting: the proxy then gets ICMP unreachable and drops the datagram, as a network would)."""
    qid = secrets.randbelow(65536)
    own = sock is None
    s = sock or socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.settimeout(0.3)
        while time.monotonic() < deadline:
            s.sendto(dns_query(name, qid), server)
            try:
                while True:  # a late answer to an earlier try is read and skipped
                    reply, source = s.recvfrom(512)
                    assert source == server, f"answer from {source}, asked {server}"
                    if int.from_bytes(reply[:2], "big") == qid:
                        rcode, found = dns_a_answers(reply, qid)
                        assert rcode == 0, f"rcode {rcode} for {name}"
                        return found
            except TimeoutError:
                continue
        raise AssertionError(f"no DNS answer for {name} from {server}")
    finally:
        if own:
            s.close()


def test_publish_udp(stack: Stack, client: docker.DockerClient, tmp_path: Path) -> None:
    """A real UDP DNS server in a container: queried from 127.0.0.1 through the published port's proxy
    (two clients at once, each answered on its own flow), and from another container on a user network."""
    tag = secrets.token_hex(3)
    names = {"svc.skiff.test": "10.1.2.3", "db.skiff.test": "10.4.5.6"}
    with open(dnsd_archive(tmp_path, names), "rb") as archive:
        client.images.load(archive.read())
    net, server = f"udp-{tag}", f"dnsd-{tag}"
    ok(stack, "network", "create", net)
    ok(stack, "run", "-d", "--name", server, "--network", net, "-p", "127.0.0.1::53/udp", DNSD_IMAGE)
    binding = json.loads(ok(stack, "inspect", server))[0]["NetworkSettings"]["Ports"]["53/udp"][0]
    assert binding["HostIp"] == "127.0.0.1"
    published = ("127.0.0.1", int(binding["HostPort"]))
    assert f"127.0.0.1:{published[1]}" in ok(stack, "port", server, "53/udp")
    deadline = time.monotonic() + 15
    assert ask_dns(published, "svc.skiff.test", deadline) == ["10.1.2.3"]
    # two clients (two source ports) interleaved: each gets the answer to its own question
    udp = (socket.AF_INET, socket.SOCK_DGRAM)
    with socket.socket(*udp) as one, socket.socket(*udp) as two:
        for _ in range(3):
            assert ask_dns(published, "svc.skiff.test", deadline, one) == ["10.1.2.3"]
            assert ask_dns(published, "db.skiff.test", deadline, two) == ["10.4.5.6"]
    # container -> container over UDP on the user network, the server found by its name
    out = ok(stack, "run", "--rm", "--network", net, "busybox", "nslookup", "db.skiff.test", server)
    assert "10.4.5.6" in out, out
    ok(stack, "rm", "-f", server)
    ok(stack, "network", "rm", net)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(published)  # the proxy let go of the port
