"""Networking as docker-py's and the docker CLI's own expectations of dockerd have it (issue 11).

Each test names the dockerd behaviour it guards: the swarm routes of a node without a swarm, IPv6 and
IPAM.Config entries in full, network names with spaces, the endpoint fields of container inspect
(IPAMConfig, Links, DriverOpts, MacAddress, Aliases), --mac-address, connecting after a disconnect from
the only network, and a default bridge adopting the address its device already has.
"""

from __future__ import annotations

import contextlib
import ipaddress
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from docker.types import EndpointConfig, IPAMConfig, IPAMPool

from tests.e2e.stack import Stack
from tests.e2e.test_docker_cli import cli

DOCKER_CLI = shutil.which("docker") is not None


def ok(stack: Stack, *args: str) -> str:
    run = cli(stack, *args)
    assert run.returncode == 0, f"docker {' '.join(args)}: {run.stderr}"
    return run.stdout.strip()


def free_subnet() -> ipaddress.IPv4Network:
    """A /24 no route or address of the host overlaps (stacks of other tests run beside this one)."""
    from services.daemon.network.ipam import host_networks

    busy = host_networks()
    for _ in range(200):
        net = ipaddress.IPv4Network(f"10.{150 + secrets.randbelow(40)}.{secrets.randbelow(256)}.0/24")
        if not any(net.overlaps(b) for b in busy):
            return net
    raise AssertionError("no free 10.x/24 on this host")


def ula() -> ipaddress.IPv6Network:
    return ipaddress.IPv6Network((0xFD00 << 112 | secrets.randbits(56) << 64, 64))


@pytest.fixture
def networks(client: docker.DockerClient) -> Iterator[list[str]]:
    """Names or ids of networks a test makes: removed afterwards (after the stack's containers are gone)."""
    made: list[str] = []
    yield made
    for container in client.api.containers(all=True):
        with contextlib.suppress(docker.errors.NotFound):
            client.api.remove_container(container["Id"], force=True)
    for ref in made:
        with contextlib.suppress(docker.errors.NotFound):
            client.api.remove_network(ref)


def in_container(client: docker.DockerClient, container: str, *cmd: str) -> str:
    exec_id = client.api.exec_create(container, list(cmd))["Id"]
    out = client.api.exec_start(exec_id).decode()
    code = client.api.exec_inspect(exec_id)["ExitCode"]
    assert code == 0, f"{cmd} exited {code}: {out}"
    return out


# ---- swarm: a node that is not part of one ---------------------------------------------------------


def test_swarm_routes_answer_as_a_node_without_swarm(stack: Stack, client: docker.DockerClient) -> None:
    """docker-py's network tests call leave_swarm(force=True) in every teardown: 503, not 404."""
    api = client.api
    response = api._post(api._url("/swarm/leave"), params={"force": True})
    assert response.status_code == 503
    assert response.json() == {"message": "This node is not part of a swarm"}
    assert api.leave_swarm(force=True) is True
    for method, path in (("GET", "/swarm"), ("GET", "/nodes"), ("GET", "/services"), ("GET", "/tasks"),
                         ("GET", "/secrets"), ("GET", "/configs"), ("GET", "/swarm/unlockkey")):
        answer = api._get(api._url(path)) if method == "GET" else api._post(api._url(path))
        assert answer.status_code == 503, path
        assert "This node is not a swarm manager" in answer.json()["message"], path
    if DOCKER_CLI:
        run = cli(stack, "node", "ls")
        assert run.returncode != 0 and "not a swarm manager" in run.stderr, run.stderr


# ---- network names and IPAM.Config ---------------------------------------------------------------


def test_network_name_with_spaces(client: docker.DockerClient, networks: list[str]) -> None:
    name = f"test {secrets.token_hex(3)}"
    net_id = client.api.create_network(name)["Id"]
    networks.append(net_id)
    assert client.api.inspect_network(name)["Id"] == net_id
    assert client.api.remove_network(name) is None
    with pytest.raises(docker.errors.APIError) as empty:
        client.api.create_network("  ")
    assert empty.value.response.status_code == 400


def test_ipam_config_shown_as_given_and_subnet_free_again(client: docker.DockerClient, networks: list[str]) -> None:
    """IPRange and AuxiliaryAddresses are echoed, IPAM.Options null when none was given; a removed network's
    subnet can be taken again at once (no stale pool: "subnet overlaps")."""
    subnet = free_subnet()
    hosts = list(subnet.hosts())
    ip_range = ipaddress.IPv4Network(f"{subnet.network_address + 128}/25")
    pool = IPAMPool(subnet=str(subnet), iprange=str(ip_range), gateway=str(hosts[-1]),
                    aux_addresses={"a": str(hosts[4]), "b": str(hosts[5])})
    for _ in range(2):
        name = f"ipam-{secrets.token_hex(3)}"
        net_id = client.api.create_network(name, ipam=IPAMConfig(pool_configs=[pool]))["Id"]
        networks.append(net_id)
        ipam = client.api.inspect_network(net_id)["IPAM"]
        assert ipam.pop("Options", None) is None
        assert ipam == {"Driver": "default", "Config": [{
            "Subnet": str(subnet), "IPRange": str(ip_range), "Gateway": str(hosts[-1]),
            "AuxiliaryAddresses": {"a": str(hosts[4]), "b": str(hosts[5])}}]}
        box = client.api.create_container("busybox", "sleep 300", host_config=client.api.create_host_config(
            network_mode=name))
        client.api.start(box)
        address = client.api.inspect_container(box)["NetworkSettings"]["Networks"][name]["IPAddress"]
        assert ipaddress.IPv4Address(address) in ip_range
        client.api.remove_container(box, force=True)
        client.api.remove_network(net_id)
    with pytest.raises(docker.errors.APIError) as bad:
        client.api.create_network("bad-subnet", ipam=IPAMConfig(pool_configs=[IPAMPool(subnet=f"{hosts[0]}/24")]))
    assert bad.value.response.status_code == 400 and "it should be" in str(bad.value)


def test_ipv6_network_and_container_addresses(client: docker.DockerClient, networks: list[str]) -> None:
    """--ipv6 --subnet: EnableIPv6, the IPv6 entry first then the automatic IPv4 one; a container's
    GlobalIPv6Address (given with --ip6 or handed out) is on its eth0 and reaches the gateway."""
    v6 = ula()
    gateway = v6.network_address + 0xFFFF
    name = f"six-{secrets.token_hex(3)}"
    net_id = client.api.create_network(name, enable_ipv6=True, ipam=IPAMConfig(pool_configs=[
        IPAMPool(subnet=str(v6), iprange=f"{v6.network_address}/96", gateway=str(gateway))]))["Id"]
    networks.append(net_id)
    net = client.api.inspect_network(net_id)
    assert net["EnableIPv6"] is True
    config = net["IPAM"]["Config"]
    assert config[0] == {"Subnet": str(v6), "IPRange": f"{v6.network_address}/96", "Gateway": str(gateway)}
    assert len(config) == 2 and ipaddress.ip_network(config[1]["Subnet"]).version == 4

    wanted = v6.network_address + 0xF00D
    box = client.api.create_container("busybox", "sleep 300", host_config=client.api.create_host_config(
        network_mode=name), networking_config=client.api.create_networking_config(
        {name: client.api.create_endpoint_config(ipv6_address=str(wanted))}))
    client.api.start(box)
    settings = client.api.inspect_container(box)["NetworkSettings"]
    ep = settings["Networks"][name]
    assert ep["IPAMConfig"] == {"IPv6Address": str(wanted)}
    assert (ep["GlobalIPv6Address"], ep["GlobalIPv6PrefixLen"], ep["IPv6Gateway"]) == (str(wanted), 64, str(gateway))
    assert settings["GlobalIPv6Address"] == str(wanted)
    assert f"inet6 {wanted}/64" in in_container(client, box["Id"], "ip", "-6", "addr", "show", "eth0")
    assert f"default via {gateway}" in in_container(client, box["Id"], "ip", "-6", "route")
    in_container(client, box["Id"], "ping", "-6", "-c1", "-W3", str(gateway))

    other = client.api.create_container("busybox", "sleep 300", host_config=client.api.create_host_config(
        network_mode=name))
    client.api.start(other)
    handed = client.api.inspect_container(other)["NetworkSettings"]["Networks"][name]["GlobalIPv6Address"]
    assert ipaddress.IPv6Address(handed) in v6 and handed not in (str(wanted), str(gateway))
    members = client.api.inspect_network(net_id)["Containers"]
    assert members[box["Id"]]["IPv6Address"] == f"{wanted}/64"
    in_container(client, other["Id"], "ping", "-6", "-c1", "-W3", str(wanted))


@pytest.mark.skipif(not DOCKER_CLI, reason="docker CLI not installed")
def test_ipv6_with_the_docker_cli(stack: Stack, client: docker.DockerClient, networks: list[str]) -> None:
    v6, tag = ula(), secrets.token_hex(3)
    name = f"cli six {tag}"
    ok(stack, "network", "create", "--ipv6", "--subnet", str(v6), name)
    networks.append(name)
    address = v6.network_address + 0x42
    ok(stack, "run", "-d", "--name", f"six-{tag}", "--network", name, "--ip6", str(address), "busybox", "sleep", "300")
    shown = ok(stack, "inspect", "-f", f'{{{{(index .NetworkSettings.Networks "{name}").GlobalIPv6Address}}}}',
               f"six-{tag}")
    assert shown == str(address)
    assert ok(stack, "network", "inspect", "-f", "{{.EnableIPv6}}", name) == "true"
    # --ipv6 without a subnet: a /64 of the unique local range is chosen, beside the IPv4 one
    auto = f"auto-six-{tag}"
    ok(stack, "network", "create", "--ipv6", auto)
    networks.append(auto)
    subnets = [ipaddress.ip_network(c["Subnet"]) for c in client.api.inspect_network(auto)["IPAM"]["Config"]]
    six = [n for n in subnets if n.version == 6]
    assert len(subnets) == 2 and six[0].prefixlen == 64 and six[0].subnet_of(ipaddress.IPv6Network("fd00::/8"))


# ---- endpoint fields of container inspect ----------------------------------------------------------


def test_endpoint_fields_before_and_after_start(client: docker.DockerClient, networks: list[str]) -> None:
    """IPAMConfig, Links, Aliases, DriverOpts and MacAddress as the create asked, shown before the start and
    after it; the MAC is the interface's inside; a link's alias resolves to the linked container."""
    subnet = free_subnet()
    name = f"ep-{secrets.token_hex(3)}"
    networks.append(client.api.create_network(name, ipam=IPAMConfig(pool_configs=[IPAMPool(subnet=str(subnet))]))["Id"])
    ip = str(list(subnet.hosts())[22])
    mac = "02:42:ac:11:00:0a"
    upstream = f"upstream-{secrets.token_hex(3)}"
    endpoint = EndpointConfig(client.api._version, aliases=["foo", "bar"], links=[(upstream, "up")],
                              ipv4_address=ip, link_local_ips=["169.254.8.8"], driver_opt={"com.skiff.test": "on"},
                              mac_address=mac)
    box = client.api.create_container("busybox", "sleep 300",
                                      host_config=client.api.create_host_config(network_mode=name),
                                      networking_config=client.api.create_networking_config({name: endpoint}))

    def check(ep: dict[str, object]) -> None:
        assert ep["IPAMConfig"] == {"IPv4Address": ip, "LinkLocalIPs": ["169.254.8.8"]}
        assert ep["Links"] == [f"{upstream}:up"]
        assert ep["DriverOpts"] == {"com.skiff.test": "on"}
        assert ep["MacAddress"] == mac
        assert {"foo", "bar"} <= set(ep["Aliases"])  # type: ignore[arg-type]

    check(client.api.inspect_container(box)["NetworkSettings"]["Networks"][name])
    client.api.start(box)
    settings = client.api.inspect_container(box)["NetworkSettings"]
    check(settings["Networks"][name])
    assert settings["Networks"][name]["IPAddress"] == ip and settings["MacAddress"] == mac
    assert in_container(client, box["Id"], "cat", "/sys/class/net/eth0/address").strip() == mac
    assert "169.254.8.8/16" in in_container(client, box["Id"], "ip", "-4", "addr", "show", "eth0")
    other = client.api.create_container("busybox", "sleep 300", name=upstream,
                                        host_config=client.api.create_host_config(network_mode=name))
    client.api.start(other)
    other_ip = client.api.inspect_container(other)["NetworkSettings"]["Networks"][name]["IPAddress"]
    hosts = in_container(client, box["Id"], "cat", "/etc/hosts")
    assert any(line.split()[0] == other_ip and "up" in line.split()[1:] for line in hosts.splitlines() if line), hosts
    # the embedded DNS server (127.0.0.11) answers the link's alias too: docker-py's nslookup bar
    assert other_ip in in_container(client, box["Id"], "nslookup", "up")


def test_mac_address_at_create(stack: Stack, client: docker.DockerClient) -> None:
    """docker-py's Config.MacAddress (moved to the main network's endpoint, as dockerd does) and the CLI's."""
    mac = "02:42:ac:11:00:0b"
    box = client.api.create_container("busybox", ["sleep", "60"], mac_address=mac)
    client.api.start(box)
    assert client.api.inspect_container(box)["NetworkSettings"]["MacAddress"] == mac
    assert in_container(client, box["Id"], "cat", "/sys/class/net/eth0/address").strip() == mac
    client.api.remove_container(box, force=True)
    with pytest.raises(docker.errors.APIError) as conflict:
        client.api.create_container("busybox", "true", mac_address=mac,
                                    host_config=client.api.create_host_config(network_mode="host"))
    assert conflict.value.response.status_code == 400
    if DOCKER_CLI:
        cli_mac = "02:42:ac:11:00:0c"
        out = ok(stack, "run", "--rm", "--mac-address", cli_mac, "busybox", "cat", "/sys/class/net/eth0/address")
        assert out == cli_mac


def test_connect_with_mac_to_a_created_container(client: docker.DockerClient, networks: list[str]) -> None:
    name = f"mac-{secrets.token_hex(3)}"
    networks.append(client.api.create_network(name)["Id"])
    box = client.api.create_container("busybox", "top")
    client.api.connect_container_to_network(box, name, mac_address="02:42:ac:11:00:02")
    assert client.api.inspect_container(box)["NetworkSettings"]["Networks"][name]["MacAddress"] == "02:42:ac:11:00:02"


# ---- connect after disconnect; NetworkMode of a user network ---------------------------------------


def test_connect_after_disconnect_from_the_only_network(client: docker.DockerClient, networks: list[str]) -> None:
    tag = secrets.token_hex(3)
    first, second = f"first-{tag}", f"second-{tag}"
    networks += [client.api.create_network(first)["Id"], client.api.create_network(second)["Id"]]
    box = client.api.create_container("busybox", "sleep 300",
                                      host_config=client.api.create_host_config(network_mode=first))
    client.api.start(box)
    client.api.disconnect_container_from_network(box, first)
    attrs = client.api.inspect_container(box)
    assert attrs["NetworkSettings"]["Networks"] == {} and attrs["HostConfig"]["NetworkMode"] == first
    client.api.connect_container_to_network(box, second)
    attrs = client.api.inspect_container(box)
    assert list(attrs["NetworkSettings"]["Networks"]) == [second]
    address = attrs["NetworkSettings"]["Networks"][second]["IPAddress"]
    assert address and f"inet {address}/" in in_container(client, box["Id"], "ip", "-4", "addr")
    assert "default via" in in_container(client, box["Id"], "ip", "route")
    # stopped and started again: on the second network only
    client.api.restart(box, timeout=1)
    attrs = client.api.inspect_container(box)
    assert list(attrs["NetworkSettings"]["Networks"]) == [second]
    assert attrs["NetworkSettings"]["Networks"][second]["IPAddress"]
    assert list(client.api.inspect_network(second)["Containers"]) == [box["Id"]]
    assert client.api.inspect_network(first)["Containers"] == {}
    # and back to the first one
    client.api.connect_container_to_network(box, first)
    assert set(client.api.inspect_container(box)["NetworkSettings"]["Networks"]) == {first, second}


def test_created_with_a_user_network_then_connected(client: docker.DockerClient, networks: list[str]) -> None:
    """compose's up -d: create with NetworkMode=<project>_default, connect the others (some after a
    disconnect of the first), then start: every network joined."""
    tag = secrets.token_hex(3)
    front, back = f"front-{tag}", f"back-{tag}"
    networks += [client.api.create_network(front)["Id"], client.api.create_network(back)["Id"]]
    box = client.api.create_container("busybox", "sleep 300",
                                      host_config=client.api.create_host_config(network_mode=front))
    client.api.disconnect_container_from_network(box, front)
    client.api.connect_container_to_network(box, front, aliases=["web"])
    client.api.connect_container_to_network(box, back, aliases=["api"])
    client.api.start(box)
    nets = client.api.inspect_container(box)["NetworkSettings"]["Networks"]
    assert set(nets) == {front, back}
    assert all(nets[n]["IPAddress"] for n in nets)
    assert "web" in nets[front]["Aliases"] and "api" in nets[back]["Aliases"]
    links = in_container(client, box["Id"], "ls", "/sys/class/net").split()
    assert {"eth0", "eth1"} <= set(links)


# ---- the embedded DNS server -------------------------------------------------------------------------


def test_embedded_dns_server(client: docker.DockerClient, networks: list[str], tmp_path: Path) -> None:
    """On a user network resolv.conf names 127.0.0.11: peers' names and aliases are answered there, other
    names are forwarded to the container's --dns servers, and the container's own port 53 stays free."""
    from tests.e2e.netstack import DNSD_IMAGE, dnsd_archive

    with open(dnsd_archive(tmp_path, {"svc.skiff.test": "10.1.2.3"}), "rb") as archive:
        client.images.load(archive.read())
    tag = secrets.token_hex(3)
    name = f"dns-{tag}"
    networks.append(client.api.create_network(name)["Id"])
    server = client.api.create_container(DNSD_IMAGE, name=f"dnsd-{tag}",
                                         host_config=client.api.create_host_config(network_mode=name))
    client.api.start(server)  # binds 0.0.0.0:53 in its own namespace, beside its embedded resolver
    server_ip = client.api.inspect_container(server)["NetworkSettings"]["Networks"][name]["IPAddress"]
    asker = client.api.create_container(
        "busybox", "sleep 300", name=f"asker-{tag}", host_config=client.api.create_host_config(
            network_mode=name, dns=[server_ip]),
        networking_config=client.api.create_networking_config({name: client.api.create_endpoint_config(
            aliases=["questions"])}))
    client.api.start(asker)
    resolv = in_container(client, asker["Id"], "cat", "/etc/resolv.conf")
    assert "nameserver 127.0.0.11" in resolv and server_ip in resolv, resolv
    assert server_ip in in_container(client, asker["Id"], "nslookup", f"dnsd-{tag}")
    asker_ip = client.api.inspect_container(asker)["NetworkSettings"]["Networks"][name]["IPAddress"]
    assert asker_ip in in_container(client, asker["Id"], "nslookup", "questions")
    assert "10.1.2.3" in in_container(client, asker["Id"], "nslookup", "svc.skiff.test")
    # the default bridge has no embedded server (dockerd's rule)
    plain = client.api.create_container("busybox", "cat /etc/resolv.conf")
    client.api.start(plain)
    client.api.wait(plain)
    assert b"127.0.0.11" not in client.api.logs(plain)


def test_embedded_dns_after_a_daemon_restart(stack: Stack, client: docker.DockerClient, networks: list[str]) -> None:
    """The daemon's resolver sockets go with the daemon: a restart serves running containers again."""
    tag = secrets.token_hex(3)
    name = f"restart-dns-{tag}"
    networks.append(client.api.create_network(name)["Id"])
    boxes = []
    for who in ("one", "two"):
        box = client.api.create_container("busybox", "sleep 300", name=f"{who}-{tag}",
                                          host_config=client.api.create_host_config(network_mode=name))
        client.api.start(box)
        boxes.append(box["Id"])
    one_ip = client.api.inspect_container(boxes[0])["NetworkSettings"]["Networks"][name]["IPAddress"]
    assert one_ip in in_container(client, boxes[1], "nslookup", f"one-{tag}")
    stack.stop("services.daemon")
    stack.start("services.daemon")
    assert one_ip in in_container(client, boxes[1], "nslookup", f"one-{tag}")


# ---- the default bridge adopts its device's address ------------------------------------------------


def test_default_bridge_adopts_the_existing_device_address(tmp_path: Path) -> None:
    """A fresh root with no default subnet set, on a host where the bridge device exists with an address:
    the engine's default network takes that subnet and adds no second address (twice in a row)."""
    from pyroute2 import IPRoute

    from tests.conftest import needs_root
    from tests.e2e.netstack import network_env

    needs_root()
    subnet = free_subnet()
    gateway = ipaddress.IPv4Interface(f"{subnet.network_address + 1}/{subnet.prefixlen}")
    device = "skb" + secrets.token_hex(5)
    with IPRoute() as ipr:
        ipr.link("add", ifname=device, kind="bridge")
        index = ipr.link_lookup(ifname=device)[0]
        ipr.addr("add", index=index, address=str(gateway.ip), prefixlen=subnet.prefixlen)
    try:
        for run in range(2):
            prefix = tmp_path / f"engine{run}"
            prefix.mkdir()
            network_env(prefix)  # the stack's marker, then this test's: its device, and no default subnet
            (prefix / ".netenv").write_text(f"{device} auto")
            stack = Stack(prefix, "skiff-lowlevel")
            try:
                stack.start_all()
                c = docker.DockerClient(base_url=stack.base_url, timeout=30)
                ipam = c.api.inspect_network("bridge")["IPAM"]["Config"]
                c.close()
                assert ipam == [{"Subnet": str(subnet), "Gateway": str(gateway.ip)}]
                with IPRoute() as ipr:
                    found = [(a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=index, family=2)]
                assert found == [(str(gateway.ip), subnet.prefixlen)]
                stack.stop_all()
            finally:
                stack.force_cleanup()
            with IPRoute() as ipr:
                if not ipr.link_lookup(ifname=device):  # the engine's cleanup took the adopted device away
                    ipr.link("add", ifname=device, kind="bridge")
                    index = ipr.link_lookup(ifname=device)[0]
                    ipr.addr("add", index=index, address=str(gateway.ip), prefixlen=subnet.prefixlen)
    finally:
        with IPRoute() as ipr:
            for i in ipr.link_lookup(ifname=device):
                ipr.link("del", index=i)
        from services.daemon.network import firewall

        with contextlib.suppress(Exception):
            firewall.remove_network(device, subnet)
