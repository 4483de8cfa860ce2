"""Skiff next to Docker's firewall: br_netfilter on and the iptables FORWARD policy DROP, as dockerd leaves a
host. The whole stack runs inside a network namespace the test makes (iptables, the bridge-nf sysctls and
the forwarding policy are per namespace), so the host's own FORWARD policy is never touched. Docker's rule
layout is laid in that namespace first and must come out of the test unchanged.

The docker CLI reaches the apiserver through its socket file from the host namespace; traffic to published
ports is sent from a thread of the test process that has joined the private namespace.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import docker
import pytest

from services.daemon.network import netns
from tests.conftest import needs_root
from tests.e2e.conftest import RUNTIME_SWITCH_ENV
from tests.e2e.netstack import DNSD_IMAGE, dnsd_archive, network_env
from tests.e2e.stack import Stack, busybox_archive
from tests.e2e.test_docker_cli import cli
from tests.e2e.test_network_cli import ask_dns, http_get

pytestmark = pytest.mark.skipif(shutil.which("docker") is None, reason="docker CLI not installed")

T = TypeVar("T")
BRIDGE_NF = "/proc/sys/net/bridge/bridge-nf-call-iptables"

# What dockerd 20.10 leaves in the filter and nat tables (docker0 on 172.17.0.0/16), policy DROP included.
DOCKER_RULES = [
    ("filter", "-P", "FORWARD", "DROP"),
    ("filter", "-N", "DOCKER"),
    ("filter", "-N", "DOCKER-ISOLATION-STAGE-1"),
    ("filter", "-N", "DOCKER-ISOLATION-STAGE-2"),
    ("filter", "-N", "DOCKER-USER"),
    ("filter", "-A", "FORWARD", "-j", "DOCKER-USER"),
    ("filter", "-A", "FORWARD", "-j", "DOCKER-ISOLATION-STAGE-1"),
    ("filter", "-A", "FORWARD", "-o", "docker0", "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"),
    ("filter", "-A", "FORWARD", "-o", "docker0", "-j", "DOCKER"),
    ("filter", "-A", "FORWARD", "-i", "docker0", "!", "-o", "docker0", "-j", "ACCEPT"),
    ("filter", "-A", "FORWARD", "-i", "docker0", "-o", "docker0", "-j", "ACCEPT"),
    (
        "filter",
        "-A",
        "DOCKER-ISOLATION-STAGE-1",
        "-i",
        "docker0",
        "!",
        "-o",
        "docker0",
        "-j",
        "DOCKER-ISOLATION-STAGE-2",
    ),
    ("filter", "-A", "DOCKER-ISOLATION-STAGE-1", "-j", "RETURN"),
    ("filter", "-A", "DOCKER-ISOLATION-STAGE-2", "-o", "docker0", "-j", "DROP"),
    ("filter", "-A", "DOCKER-ISOLATION-STAGE-2", "-j", "RETURN"),
    ("filter", "-A", "DOCKER-USER", "-j", "RETURN"),
    ("nat", "-N", "DOCKER"),
    ("nat", "-A", "POSTROUTING", "-s", "172.17.0.0/16", "!", "-o", "docker0", "-j", "MASQUERADE"),
    ("nat", "-A", "DOCKER", "-i", "docker0", "-j", "RETURN"),
]
HTTPD = "mkdir -p /www && echo hello-fw > /www/index.html && exec httpd -f -p 80 -h /www"


@contextlib.contextmanager
def private_netns(folder: Path) -> Iterator[Path]:
    """A fresh network namespace (loopback up) pinned under ``folder``; unpinned afterwards."""
    path = netns.create(folder, "fw")
    try:
        yield path
    finally:
        netns.remove_path(path)


def inside(ns: Path, fn: Callable[[], T]) -> T:
    return netns.run_in_netns(ns, fn)


def iptables(ns: Path, *args: str) -> str:
    def run() -> str:
        done = subprocess.run(["iptables", "-w", "5", *args], capture_output=True, text=True, timeout=20)
        assert done.returncode == 0, f"iptables {' '.join(args)}: {done.stderr}"
        return done.stdout

    return inside(ns, run)


def rules(ns: Path) -> list[str]:
    """Every rule and policy of the filter and nat tables in ``ns``, as ``iptables -S`` prints them."""
    return [f"filter {r}" for r in iptables(ns, "-S").splitlines()] + [
        f"nat {r}" for r in iptables(ns, "-t", "nat", "-S").splitlines()
    ]


def docker_rules(ns: Path) -> list[str]:
    return [r for r in rules(ns) if "docker" in r.lower() or " -P FORWARD" in r]


def links(ns: Path) -> set[str]:
    from pyroute2 import IPRoute

    def read() -> set[str]:
        with IPRoute() as ipr:
            return {str(link.get_attr("IFLA_IFNAME")) for link in ipr.get_links()}

    return inside(ns, read)


def sysctl(ns: Path, path: str, value: str | None = None) -> str:
    def run() -> str:
        if value is not None:
            with open(path, "w") as f:
                f.write(value)
        with open(path) as f:
            return f.read().strip()

    return inside(ns, run)


def http_get_inside(ns: Path, host: str, port: int, deadline: float) -> bytes:
    return inside(ns, lambda: http_get(port, deadline, host))


def dns_inside(ns: Path, port: int, name: str, deadline: float) -> list[str]:
    return inside(ns, lambda: ask_dns(("127.0.0.1", port), name, deadline))


def ok(stack: Stack, *args: str) -> str:
    run = cli(stack, *args, timeout=90)
    assert run.returncode == 0, f"docker {' '.join(args)}: {run.stderr}"
    return run.stdout.strip()


def pings(stack: Stack, container: str, target: str) -> bool:
    return " 0% packet loss" in cli(stack, "exec", container, "ping", "-c1", "-W1", target).stdout


def count(ns: Path, needle: str) -> int:
    """How many rules name ``needle`` as a whole word (a bridge, a chain)."""
    return sum(1 for r in rules(ns) if needle in r.split())


def exact(ns: Path, line: str) -> int:
    return rules(ns).count(line)


def skiff_rules(ns: Path) -> list[str]:
    return [r for r in rules(ns) if "skiff" in r.lower() or any(w.startswith("skt") for w in r.split())]


@pytest.fixture
def fw(prefix: Path, tmp_path: Path) -> Iterator[tuple[Stack, Path]]:
    """The stack, started inside a private namespace with Docker's firewall (FORWARD DROP) laid in it."""
    needs_root()
    if shutil.which("iptables") is None:
        pytest.fail("iptables is needed")
    if not os.path.exists(BRIDGE_NF) and shutil.which("modprobe"):
        subprocess.run(["modprobe", "br_netfilter"], capture_output=True, timeout=30)
    assert os.path.exists(BRIDGE_NF), "br_netfilter is neither built into this kernel nor loadable"
    with private_netns(tmp_path / "ns") as ns:
        # A fresh namespace: only lo, no rules; br_netfilter's switches are per namespace since Linux 5.3.
        assert links(ns) == {"lo"}
        assert sysctl(ns, BRIDGE_NF, "1") == "1"
        for table, *args in DOCKER_RULES:
            iptables(ns, "-t", table, *args)
        before = docker_rules(ns)
        s = Stack(prefix, os.environ.get(RUNTIME_SWITCH_ENV) or "skiff-lowlevel", netns=ns)
        ids: list[str] = []
        try:
            s.start_all()
            yield s, ns
            client = docker.DockerClient(base_url=s.base_url, timeout=60)
            for container in client.containers.list(all=True):
                ids.append(container.id)
                container.remove(force=True)
            client.close()
            s.stop_all()
            assert s.leftovers(ids) == []
        finally:
            s.force_cleanup()
        # The daemon's networks all gone (force_cleanup reconciled them away inside ns): no device and no
        # Skiff rule is left there, and Docker's rules are exactly as they were.
        assert links(ns) == {"lo"}
        assert skiff_rules(ns) == []
        assert docker_rules(ns) == before


def test_coexists_with_docker_forward_drop(fw: tuple[Stack, Path], tmp_path: Path) -> None:
    stack, ns = fw
    host_forward = subprocess.run(
        ["iptables", "-w", "5", "-S", "FORWARD"], capture_output=True, text=True, timeout=20
    ).stdout.splitlines()[0]
    assert " -P FORWARD DROP" in f" {iptables(ns, '-S', 'FORWARD').splitlines()[0]}"
    assert sysctl(ns, BRIDGE_NF) == "1"
    client = docker.DockerClient(base_url=stack.base_url, timeout=60)
    try:
        with open(busybox_archive(tmp_path), "rb") as archive:
            client.images.load(archive.read())
        with open(dnsd_archive(tmp_path, {"svc.skiff.test": "10.1.2.3"}), "rb") as archive:
            client.images.load(archive.read())
    finally:
        client.close()
    tag = secrets.token_hex(3)
    net = f"fw-{tag}"
    ok(stack, "network", "create", net)
    info = json.loads(ok(stack, "network", "inspect", net))[0]
    gateway = info["IPAM"]["Config"][0]["Gateway"]
    default_bridge = network_env(stack.prefix)["SKIFF_BRIDGE_NAME"]
    user_bridges = links(ns) - {"lo", default_bridge}
    assert len(user_bridges) == 1, user_bridges
    bridge = user_bridges.pop()
    # Skiff's accept rules ahead of Docker's: each once, the jump first in FORWARD
    assert iptables(ns, "-S", "FORWARD").splitlines()[1] == "-A FORWARD -j SKIFF-FORWARD"
    assert count(ns, bridge) == 5 and count(ns, default_bridge) == 5

    # published on 0.0.0.0 of the private namespace: 127.0.0.1 there and the bridge's gateway both reach it
    web, dnsd, peer = f"web-{tag}", f"dnsd-{tag}", f"peer-{tag}"
    ok(stack, "run", "-d", "--name", web, "--network", net, "-p", "80", "busybox", "sh", "-c", HTTPD)
    ok(stack, "run", "-d", "--name", dnsd, "--network", net, "-p", "53/udp", DNSD_IMAGE)
    ok(stack, "run", "-d", "--name", peer, "--network", net, "busybox", "sleep", "300")
    tcp_port = int(json.loads(ok(stack, "inspect", web))[0]["NetworkSettings"]["Ports"]["80/tcp"][0]["HostPort"])
    udp_port = int(json.loads(ok(stack, "inspect", dnsd))[0]["NetworkSettings"]["Ports"]["53/udp"][0]["HostPort"])

    def all_traffic_works() -> None:
        deadline = time.monotonic() + 20
        # the published ports from 127.0.0.1, tcp and udp
        assert b"hello-fw" in http_get_inside(ns, "127.0.0.1", tcp_port, deadline)
        assert dns_inside(ns, udp_port, "svc.skiff.test", deadline) == ["10.1.2.3"]
        # container <-> container on one Skiff network: bridged, so through FORWARD under br_netfilter
        assert pings(stack, peer, web)
        assert "hello-fw" in ok(
            stack, "exec", peer, "timeout", "10", "wget", "-q", "-O", "-", f"http://{web}/index.html"
        )
        assert "10.1.2.3" in ok(stack, "exec", peer, "nslookup", "svc.skiff.test", dnsd)
        # container -> the host's published ports, through the bridge's gateway
        url = f"http://{gateway}:{tcp_port}/index.html"
        assert "hello-fw" in ok(stack, "exec", peer, "timeout", "10", "wget", "-q", "-O", "-", url)
        assert "10.1.2.3" in ok(stack, "exec", peer, "nslookup", "svc.skiff.test", f"{gateway}:{udp_port}")

    all_traffic_works()

    # The policy does bite: without the jump into Skiff's chain, container <-> container is dropped.
    iptables(ns, "-D", "FORWARD", "-j", "SKIFF-FORWARD")
    assert not pings(stack, peer, web)
    # A daemon restart (containers keep running) adds back what is missing, and only that.
    stack.stop("services.daemon")
    stack.start("services.daemon")
    assert iptables(ns, "-S", "FORWARD").splitlines()[1] == "-A FORWARD -j SKIFF-FORWARD"
    assert exact(ns, "filter -A FORWARD -j SKIFF-FORWARD") == 1
    assert exact(ns, "filter -A SKIFF-FORWARD -j SKIFF-ISOLATION-1") == 1
    assert count(ns, bridge) == 5 and count(ns, default_bridge) == 5
    all_traffic_works()
    # and a second restart adds nothing twice
    stack.stop("services.daemon")
    stack.start("services.daemon")
    assert exact(ns, "filter -A FORWARD -j SKIFF-FORWARD") == 1
    assert exact(ns, "filter -A SKIFF-FORWARD -j SKIFF-ISOLATION-1") == 1
    assert count(ns, bridge) == 5 and count(ns, default_bridge) == 5

    # Removing the network removes its bridge and every rule naming it; the default bridge's stay.
    ok(stack, "rm", "-f", web, dnsd, peer)
    ok(stack, "network", "rm", net)
    assert count(ns, bridge) == 0
    assert bridge not in links(ns)
    assert count(ns, default_bridge) == 5
    # the host's own FORWARD policy was never touched
    assert (
        subprocess.run(
            ["iptables", "-w", "5", "-S", "FORWARD"], capture_output=True, text=True, timeout=20
        ).stdout.splitlines()[0]
        == host_forward
    )
