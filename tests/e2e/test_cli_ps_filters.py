"""docker ps --filter, every key, through the real docker CLI, as dockerd 20.10 answers it (skipped
when the CLI is not installed)."""

from __future__ import annotations

import shutil

import docker
import pytest

from tests.e2e.stack import Stack
from tests.e2e.test_cli_ps import ok
from tests.e2e.test_docker_cli import cli

pytestmark = pytest.mark.skipif(shutil.which("docker") is None, reason="docker CLI not installed")


def names(stack: Stack, *filters: str, everything: bool = True) -> list[str]:
    args = [a for f in filters for a in ("-f", f)]
    return ok(stack, "ps", *(["-a"] if everything else []), *args, "--format", "{{.Names}}").split()


def test_cli_ps_every_filter(stack: Stack, client: docker.DockerClient) -> None:
    ok(stack, "network", "create", "fnet")
    ok(stack, "volume", "create", "fvol")
    ok(stack, "tag", "busybox", "other:latest")
    ok(stack, "run", "-d", "--name", "a1", "-l", "k=v", "-p", "127.0.0.1::80", "--expose", "90",
       "-v", "fvol:/v", "--network", "fnet", "busybox", "sleep", "300")
    assert cli(stack, "run", "--name", "a2", "busybox", "sh", "-c", "exit 2").returncode == 2
    ok(stack, "run", "--name", "a3", "busybox", "true")
    ok(stack, "create", "--name", "a4", "busybox", "true")
    ok(stack, "run", "-d", "--name", "a5", "busybox", "sleep", "300")
    assert names(stack) == ["a5", "a4", "a3", "a2", "a1"]
    # name: a regular expression over the name with its slash and without.
    assert names(stack, "name=^/a[12]$") == ["a2", "a1"]
    assert names(stack, "name=^a1") == ["a1"]
    assert names(stack, "exited=2") == ["a2"] and names(stack, "exited=0") == ["a3"]
    assert names(stack, "ancestor=busybox") == names(stack) and names(stack, "ancestor=nosuchimg") == []
    # before/since: positions in the list of every container; without -a only running ones are shown.
    assert names(stack, "before=a3") == ["a2", "a1"] and names(stack, "since=a3") == ["a5", "a4"]
    assert names(stack, "before=a3", everything=False) == ["a1"]
    assert names(stack, "volume=fvol") == ["a1"] and names(stack, "volume=/v") == ["a1"]
    assert names(stack, "network=fnet") == ["a1"] and "a1" not in names(stack, "network=bridge")
    port = int(ok(stack, "port", "a1", "80").split(":")[-1])  # a free port the engine picked
    assert names(stack, f"publish={port}") == ["a1"] and names(stack, "publish=80") == []
    assert names(stack, f"publish={port - 5}-{port + 5}/tcp") == ["a1"]
    assert names(stack, "expose=90") == ["a1"] and names(stack, "expose=80/tcp") == ["a1"]
    assert names(stack, "expose=80/udp") == []
    assert ok(stack, "ps", "-n", "1", "-f", "network=bridge", "--format", "{{.Names}}").split() == ["a5"]
    for bad, message in (("nosuch=1", "Invalid filter 'nosuch'"), ("status=bogus", "Invalid filter 'status=bogus'"),
                         ("exited=x", 'strconv.Atoi: parsing "x": invalid syntax'),
                         ("publish=1:2", "filter for 'publish' should not contain ':': 1:2"),
                         ("since=nosuch", "no such container nosuch")):
        done = cli(stack, "ps", "-a", "-f", bad)
        assert done.returncode == 1 and message in done.stderr, (bad, done.stderr)
