"""docker network ls and prune with their filters, through the real docker CLI, as against dockerd
(skipped when the CLI is not installed)."""

from __future__ import annotations

import shutil

import docker
import pytest

from tests.e2e.stack import Stack
from tests.e2e.test_cli_ps import ok
from tests.e2e.test_docker_cli import cli

pytestmark = pytest.mark.skipif(shutil.which("docker") is None, reason="docker CLI not installed")


def names(stack: Stack, *filters: str) -> list[str]:
    args = [a for f in filters for a in ("-f", f)]
    return ok(stack, "network", "ls", *args, "--format", "{{.Name}}").split()


def test_cli_network_ls_filters(stack: Stack, client: docker.DockerClient) -> None:
    ok(stack, "network", "create", "--label", "team=a", "cn1")
    ok(stack, "network", "create", "cn2")
    ok(stack, "run", "-d", "--name", "member", "--network", "cn2", "busybox", "sleep", "300")
    assert names(stack, "label=team=a") == ["cn1"]
    assert names(stack, "label=team") == ["cn1"]
    assert names(stack, "label=team=b") == []
    assert names(stack, "name=^cn[12]$") == ["cn1", "cn2"]  # a regular expression, as dockerd's
    assert names(stack, "scope=local", "type=custom") == ["cn1", "cn2"]
    assert names(stack, "scope=swarm") == []
    assert names(stack, "type=builtin") == ["bridge", "host", "none"]
    # dangling: a network no container uses, never a predefined one.
    assert names(stack, "dangling=true") == ["cn1"]
    assert names(stack, "dangling=false") == ["bridge", "cn2", "host", "none"]
    for bad, message in (("nosuch=1", "Invalid filter 'nosuch'"),
                         ("dangling=maybe", "invalid value for filter 'dangling'"),
                         ("type=bad", "invalid filter: 'type'='bad'")):
        done = cli(stack, "network", "ls", "-f", bad)
        assert done.returncode == 1 and message in done.stderr, (bad, done.stderr)


def test_cli_network_prune_filters(stack: Stack, client: docker.DockerClient) -> None:
    ok(stack, "network", "create", "--label", "drop=1", "pdrop")
    ok(stack, "network", "create", "--label", "drop=1", "pbusy")
    ok(stack, "network", "create", "pkeep")
    ok(stack, "run", "-d", "--name", "busy", "--network", "pbusy", "busybox", "sleep", "300")
    # Only the labelled ones, and of those only the unused one.
    assert ok(stack, "network", "prune", "-f", "--filter", "label=drop=1").split() == ["Deleted", "Networks:", "pdrop"]
    assert "pkeep" in names(stack)
    # until: none is older than an hour; label!: every network but the labelled one.
    assert "Deleted" not in ok(stack, "network", "prune", "-f", "--filter", "until=1h")
    out = ok(stack, "network", "prune", "-f", "--filter", "label!=drop")
    assert out.split() == ["Deleted", "Networks:", "pkeep"], out
    assert names(stack, "type=custom") == ["pbusy"]
    refused = cli(stack, "network", "prune", "-f", "--filter", "nosuch=1")
    assert refused.returncode == 1 and "Invalid filter 'nosuch'" in refused.stderr


def test_cli_default_bridge_options(stack: Stack, client: docker.DockerClient) -> None:
    """The default bridge's Options as dockerd shows them (scripts read its MTU this way)."""
    mtu = ok(stack, "network", "inspect", "bridge", "-f", '{{index .Options "com.docker.network.driver.mtu"}}')
    assert mtu == "1500\n"
    options = ok(stack, "network", "inspect", "bridge", "-f", "{{json .Options}}")
    for key in ("default_bridge", "enable_icc", "enable_ip_masquerade", "name"):
        assert f'"com.docker.network.bridge.{key}"' in options, options
    assert '"com.docker.network.bridge.host_binding_ipv4":"0.0.0.0"' in options
