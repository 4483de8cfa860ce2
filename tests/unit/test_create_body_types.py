"""POST /containers/create bodies with values of the wrong type are the client's error (400),
found by schemathesis: each raises InvalidArgument, never a TypeError that would become a 500."""

from __future__ import annotations

from typing import Any

import pytest

from services.common.errors import InvalidArgument
from services.dockermodel import networks, request
from services.gen.skiff.daemon.v1 import ContainerConfig, HostConfig


@pytest.mark.parametrize(
    ("body", "host_body"),
    [
        ({}, {"PortBindings": {"80/tcp": -35487}}),
        ({}, {"PortBindings": {"80/tcp": [1, 2]}}),
        ({"ExposedPorts": ["80/tcp"]}, {}),
        ({"NetworkingConfig": {"EndpointsConfig": {"x": 5}}}, {}),
        ({"NetworkingConfig": {"EndpointsConfig": {"x": {"IPAMConfig": "10.0.0.1"}}}}, {}),
    ],
)
def test_wrong_types_in_network_fields(body: dict[str, Any], host_body: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgument):
        networks.apply_request(body, host_body, ContainerConfig(host=HostConfig()))


def test_good_port_bindings_still_parse() -> None:
    config = ContainerConfig(host=HostConfig())
    networks.apply_request({}, {"PortBindings": {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8080"}]}}, config)
    assert [(b.container_port, b.host_ip, b.host_port) for b in config.host.port_bindings] == [
        ("80/tcp", "127.0.0.1", "8080")]


def test_body_must_be_an_object() -> None:
    with pytest.raises(InvalidArgument):
        request.container_config_from_request([1, 2])
