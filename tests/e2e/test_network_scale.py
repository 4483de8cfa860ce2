"""Networking at scale and across a daemon crash: 50 concurrent starts on one network, SIGKILL of the
daemon in the middle of 20 concurrent runs, ``--ip`` and ``-P``.

Traffic only goes to the host's loopback and to the test's own containers over the test's bridge.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import secrets
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from typing import Any

import docker
import docker.errors
import docker.types
import pytest

from services.daemon.network import bridge, netns
from services.daemon.network.ipam import host_networks
from tests.e2e.stack import Stack
from tests.e2e.test_docker_cli import cli

HTTPD = "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 80 -h /www"


# ---- helpers ----------------------------------------------------------------------------------------


def free_subnet() -> ipaddress.IPv4Network:
    """A /24 no route or address of the host overlaps (never a range the host uses)."""
    busy = host_networks()
    for _ in range(200):
        candidate = ipaddress.IPv4Network(f"10.{150 + secrets.randbelow(40)}.{secrets.randbelow(256)}.0/24")
        if not any(candidate.overlaps(b) for b in busy):
            return candidate
    raise AssertionError("no free 10.x subnet for the test network")


def new_client(stack: Stack, pool: int = 10) -> docker.DockerClient:
    return docker.DockerClient(base_url=stack.base_url, timeout=60, max_pool_size=pool)


@contextlib.contextmanager
def user_network(client: docker.DockerClient, subnet: ipaddress.IPv4Network | None = None) -> Iterator[Any]:
    """A user-defined bridge network with its own subnet, removed afterwards even on failure."""
    subnet = subnet or free_subnet()
    ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=str(subnet))])
    net = client.networks.create(f"scale-{secrets.token_hex(3)}", driver="bridge", ipam=ipam)
    try:
        yield net
    finally:
        for c in client.containers.list(all=True):
            with contextlib.suppress(docker.errors.APIError):
                c.remove(force=True)
        with contextlib.suppress(docker.errors.APIError):
            net.remove()


def endpoint_veths(network_id: str) -> dict[str, str]:
    """Host-side veths on the network, read from the kernel: ifname -> owning container id."""
    return {
        link.ifname: link.container_id or ""
        for link in bridge.owned_links()
        if link.kind == "endpoint" and link.network_id == network_id
    }


def bridge_ports(network_id: str) -> set[str]:
    """Every device enslaved to the network's bridge, owned or not (a veth without its alias counts too)."""
    from pyroute2 import IPRoute

    names = [link.ifname for link in bridge.owned_links() if link.kind == "bridge" and link.network_id == network_id]
    assert len(names) == 1, names
    with IPRoute() as ipr:
        index = ipr.link_lookup(ifname=names[0])[0]
        return {str(link.get_attr("IFLA_IFNAME")) for link in ipr.get_links() if link.get_attr("IFLA_MASTER") == index}


def allocations(stack: Stack, network_id: str) -> dict[str, str]:
    """The daemon's IPAM file of the network: address -> owner."""
    path = stack.paths.daemon_lib / "network" / "ipam" / f"{network_id}.json"
    data = json.loads(path.read_text())
    return dict(data.get("allocations") or {})


def netns_files(stack: Stack) -> set[str]:
    return set(netns.list_names(stack.paths.netns))


def ip_on(container: Any, network: str) -> str:
    return str(container.attrs["NetworkSettings"]["Networks"][network]["IPAddress"])


def refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except OSError:
        return True


def http_get(host: str, port: int, deadline: float) -> bytes:
    """GET /index.html until it answers (httpd starts a moment after the container does)."""
    last: Exception | None = None
    for _ in range(1000):
        if time.monotonic() >= deadline:
            break
        try:
            with socket.create_connection((host, port), timeout=2) as s:
                s.sendall(b"GET /index.html HTTP/1.0\r\n\r\n")
                data = b""
                for _ in range(1000):
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                if data:
                    return data
        except OSError as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"no answer on {host}:{port}: {last}")


def released(stack: Stack, network_id: str) -> None:
    """The removed containers' veths and addresses gone: the kernel destroys a veth with its namespace
    (tens of ms after the removal returns) and the daemon hands its address back after that."""
    poll(lambda: endpoint_veths(network_id) == {} and allocations(stack, network_id) == {}, 10,
         "the removed containers' endpoints released")


def poll(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    for _ in range(10_000):
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# ---- 1. fifty containers on one network, started concurrently --------------------------------------


def test_fifty_concurrent_on_one_network(stack: Stack, client: docker.DockerClient) -> None:
    count = 50
    subnet = free_subnet()
    pooled = new_client(stack, pool=count)
    try:
        with user_network(client, subnet) as net, ThreadPoolExecutor(16) as pool:
            t0 = time.monotonic()

            def run(i: int) -> Any:
                return pooled.containers.run(
                    "busybox",
                    ["sleep", "300"],
                    detach=True,
                    network=net.name,
                    name=f"{net.name}-{i}",
                    ports={"80/tcp": ("127.0.0.1", None)},
                )

            started = list(pool.map(run, range(count)))
            start_time = time.monotonic() - t0
            for c in started:
                c.reload()
            assert [c.status for c in started] == ["running"] * count
            ids = {c.id for c in started}
            ips = [ip_on(c, net.name) for c in started]
            assert len(set(ips)) == count, sorted(ips)
            gateway = net.attrs["IPAM"]["Config"][0]["Gateway"]
            for ip in ips:
                address = ipaddress.IPv4Address(ip)
                assert address in subnet and address not in (subnet.network_address, subnet.broadcast_address)
                assert ip != gateway
            # the kernel, the namespace folder and the IPAM file agree with the containers
            assert sorted(endpoint_veths(net.id).values()) == sorted(ids)
            assert ids <= netns_files(stack)
            alloc = allocations(stack, net.id)
            assert set(alloc.values()) == ids and set(alloc) == set(ips)
            ports = [int(c.attrs["NetworkSettings"]["Ports"]["80/tcp"][0]["HostPort"]) for c in started]
            assert len(set(ports)) == count
            assert not refused(ports[0])  # the proxy listens while the container runs

            t1 = time.monotonic()
            list(pool.map(lambda c: c.remove(force=True), started))
            remove_time = time.monotonic() - t1
            print(f"\n{count} concurrent runs: {start_time:.1f} s; concurrent rm -f: {remove_time:.1f} s")
            released(stack, net.id)
            assert bridge_ports(net.id) == set()
            assert not ids & netns_files(stack)
            assert allocations(stack, net.id) == {}
            assert [p for p in ports if not refused(p)] == []
    finally:
        pooled.close()


# ---- 2. SIGKILL of the daemon in the middle of 20 concurrent runs -----------------------------------


@pytest.mark.parametrize("kill_when", ["endpoints", "returned"])
def test_daemon_sigkill_during_concurrent_runs(stack: Stack, client: docker.DockerClient, kill_when: str) -> None:
    count = 20
    pooled = new_client(stack, pool=count)
    try:
        with user_network(client) as net:
            futures: list[Future[Any]] = []
            with ThreadPoolExecutor(count) as pool:

                def run(i: int) -> Any:
                    return pooled.containers.run(
                        "busybox",
                        ["sleep", "300"],
                        detach=True,
                        network=net.name,
                        name=f"{net.name}-{i}",
                        ports={"80/tcp": ("127.0.0.1", None)},
                    )

                futures = [pool.submit(run, i) for i in range(count)]
                # in the middle: half of the endpoints made (early: inside network setup, none started yet)
                # or a quarter of the runs returned (late: some running, the rest in flight)
                if kill_when == "endpoints":
                    poll(
                        lambda: len(endpoint_veths(net.id)) >= count // 2 or all(f.done() for f in futures),
                        60,
                        "half of the endpoints",
                    )
                else:
                    poll(lambda: sum(f.done() for f in futures) >= count // 4, 60, "a quarter of the runs")
                daemon = stack.procs["services.daemon"]
                daemon.kill()  # SIGKILL, by pid
                daemon.wait(10)
                done_before = sum(1 for f in futures if f.done() and f.exception() is None)
                failed = [f.exception() for f in as_completed(futures, timeout=120) if f.exception() is not None]
            stack.start("services.daemon")
            print(f"\n{done_before} runs had returned before the kill, {len(failed)} of {count} failed across it")

            def settled() -> list[Any] | None:
                # after the restart every container's state is final: none is still 'created' with a task
                try:
                    return client.containers.list(all=True, filters={"network": net.id}) or []
                except docker.errors.APIError:
                    return None

            poll(lambda: settled() is not None, 30, "the api after the daemon restart")
            everything = client.containers.list(all=True)
            print(
                f"after the restart: {len(everything)} containers, "
                f"{sum(c.status == 'running' for c in everything)} running"
            )
            running = {c.id for c in everything if c.status == "running"}
            existing = {c.id for c in everything}
            # exactly the running containers have networking: a veth on the test's network and a netns file
            veths = endpoint_veths(net.id)
            assert sorted(veths.values()) == sorted(running), (veths, running)
            assert bridge_ports(net.id) == set(veths)
            assert netns_files(stack) == running
            alloc = allocations(stack, net.id)
            assert set(alloc.values()) == running, alloc
            ports = []
            for c in everything:
                c.reload()
                if c.id in running:
                    ip = ip_on(c, net.name)
                    assert alloc.get(ip) == c.id
                    # the published port is proxied again by the restarted daemon
                    port = int(c.attrs["NetworkSettings"]["Ports"]["80/tcp"][0]["HostPort"])
                    assert not refused(port), (c.id, port)
                    ports.append(port)
                else:  # a container that does not run shows no address either
                    networks = c.attrs["NetworkSettings"]["Networks"] or {}
                    assert (networks.get(net.name) or {}).get("IPAddress", "") == "", (c.id, networks)
            # and nothing else: no endpoint on any of the stack's networks owned by a container that is gone
            orphans = [
                link
                for link in bridge.owned_links()
                if link.kind == "endpoint"
                and link.container_id not in existing
                and link.network_id in {n.id for n in client.networks.list()}
            ]
            assert orphans == []
            # the survivors are usable: removing them releases everything
            for c in everything:
                c.remove(force=True)
            released(stack, net.id)
            assert bridge_ports(net.id) == set()
            assert netns_files(stack) == set()
            assert allocations(stack, net.id) == {}
            assert [p for p in ports if not refused(p)] == []
    finally:
        pooled.close()


# ---- 3. --ip and -P ---------------------------------------------------------------------------------


needs_cli = pytest.mark.skipif(shutil.which("docker") is None, reason="docker CLI not installed")


def ok(stack: Stack, *args: str) -> str:
    run = cli(stack, *args)
    assert run.returncode == 0, f"docker {' '.join(args)}: {run.stderr}"
    return run.stdout.strip()


@needs_cli
def test_static_ip_and_publish_all(stack: Stack, client: docker.DockerClient) -> None:
    subnet = free_subnet()
    name = f"ipnet-{secrets.token_hex(3)}"
    static = str(subnet.network_address + 50)
    ok(stack, "network", "create", "--subnet", str(subnet), name)
    try:
        web = ok(stack, "run", "-d", "--network", name, "--ip", static, "busybox", "sh", "-c", HTTPD)
        info = json.loads(ok(stack, "inspect", web))[0]
        assert info["NetworkSettings"]["Networks"][name]["IPAddress"] == static
        # real traffic from the host to the static address over the test's bridge
        assert b"ok" in http_get(static, 80, time.monotonic() + 15)
        # the same address again: refused, and no half-started container holding anything
        clash = cli(
            stack, "run", "-d", "--name", f"clash-{name}", "--network", name, "--ip", static, "busybox", "sleep", "300"
        )
        assert clash.returncode != 0, clash.stdout
        clash_info = json.loads(ok(stack, "inspect", f"clash-{name}"))[0]
        assert clash_info["State"]["Running"] is False
        net_id = json.loads(ok(stack, "network", "inspect", name))[0]["Id"]
        assert allocations(stack, net_id) == {static: web}
        # --ip outside the subnet is refused
        outside = cli(stack, "run", "-d", "--network", name, "--ip", "192.0.2.7", "busybox", "sleep", "300")
        assert outside.returncode != 0
        ok(stack, "rm", "-f", web, f"clash-{name}")
        if outside.stdout.strip():
            ok(stack, "rm", "-f", outside.stdout.strip())
        assert allocations(stack, net_id) == {}

        # -P: every exposed port to a random host port, reachable from 127.0.0.1
        published = ok(stack, "run", "-d", "-P", "--expose", "80", "busybox", "sh", "-c", HTTPD)
        ports = json.loads(ok(stack, "inspect", published))[0]["NetworkSettings"]["Ports"]
        binding = ports["80/tcp"][0]
        host_port = int(binding["HostPort"])
        assert host_port > 0
        assert f":{host_port}" in ok(stack, "port", published, "80/tcp")
        assert b"ok" in http_get("127.0.0.1", host_port, time.monotonic() + 15)
        ok(stack, "rm", "-f", published)
        assert refused(host_port)
    finally:
        for c in client.containers.list(all=True):
            with contextlib.suppress(docker.errors.APIError):
                c.remove(force=True)
        cli(stack, "network", "rm", name)
