"""An ended container's endpoint: its namespace unpinned at once, its veth and address gone after.

The daemon's teardown no longer deletes the veth itself (25-35 ms of the kernel's on every ``docker run
--rm``'s path): the kernel destroys it with the namespace, and the address is handed back only once
the veth is gone. What a client can see of that must stay what dockerd shows.
"""

from __future__ import annotations

import ipaddress

import docker
import docker.types
import pytest

from tests.e2e.stack import Stack
from tests.e2e.test_network_scale import allocations, endpoint_veths, ip_on, poll, released, user_network

pytestmark = pytest.mark.root


def test_run_rm_leaves_no_veth_and_no_address(stack: Stack, client: docker.DockerClient) -> None:
    with user_network(client) as net:
        out = client.containers.run("busybox", ["ip", "-o", "-4", "addr", "show", "eth0"], remove=True,
                                    network=net.name)
        assert b"inet " in out
        released(stack, net.id)


def test_an_address_is_reused_right_after_its_container_goes(stack: Stack, client: docker.DockerClient) -> None:
    """``--ip`` of a container just removed: the new one waits for the old veth, not a 409 Conflict."""
    with user_network(client) as net:
        subnet = ipaddress.IPv4Network(net.attrs["IPAM"]["Config"][0]["Subnet"])
        wanted = str(subnet.network_address + 77)
        for round_ in range(3):
            config = client.api.create_networking_config(
                {net.name: client.api.create_endpoint_config(ipv4_address=wanted)})
            created = client.api.create_container("busybox", ["true"], networking_config=config,
                                                  host_config=client.api.create_host_config(network_mode=net.name))
            client.api.start(created["Id"])
            assert client.api.wait(created["Id"], timeout=30)["StatusCode"] == 0, round_
            client.api.remove_container(created["Id"])
        released(stack, net.id)


def test_a_restarted_container_keeps_one_address(stack: Stack, client: docker.DockerClient) -> None:
    """The release of a run's endpoint never takes the next run's address (same owner) away."""
    with user_network(client) as net:
        c = client.containers.run("busybox", ["sleep", "300"], detach=True, network=net.name)
        try:
            for _ in range(3):
                c.restart(timeout=0)
            c.reload()
            address = ip_on(c, net.name)
            # any release still under way has finished by the time the next address is handed out
            other = client.containers.run("busybox", ["sleep", "300"], detach=True, network=net.name)
            other.reload()
            assert ip_on(other, net.name) != address
            assert allocations(stack, net.id).get(address) == c.id
            assert sorted(endpoint_veths(net.id).values()) == sorted([c.id, other.id])
        finally:
            c.remove(force=True)
        poll(lambda: c.id not in endpoint_veths(net.id).values(), 10, "the removed container's veth gone")
