"""docker ps and its columns as the real docker CLI shows them against dockerd 20.10 (skipped when the
CLI is not installed): the Command with quoted arguments, Status of a paused container, Ports of exposed
but unpublished ports, Networks of stopped, host and none containers, -n counting stopped containers,
and rename's refusal."""

from __future__ import annotations

import json
import shutil

import docker
import pytest

from tests.e2e.stack import Stack
from tests.e2e.test_docker_cli import cli

pytestmark = pytest.mark.skipif(shutil.which("docker") is None, reason="docker CLI not installed")


def ok(stack: Stack, *args: str) -> str:
    done = cli(stack, *args)
    assert done.returncode == 0, (args, done.stderr)
    return done.stdout


def rows(stack: Stack, *args: str) -> dict[str, str]:
    """``ps -a --format '{{.Names}}|...'`` as name -> the rest."""
    out = ok(stack, "ps", "-a", *args)
    return dict(line.split("|", 1) for line in out.splitlines())


def test_cli_ps_columns(stack: Stack, client: docker.DockerClient) -> None:
    ok(stack, "run", "-d", "--name", "quoted", "-p", "127.0.0.1::80", "--expose", "90", "busybox",
       "sh", "-c", "sleep 300")
    assert cli(stack, "run", "--name", "exited", "busybox", "sh", "-c", "exit 3").returncode == 3
    ok(stack, "create", "--name", "none", "--network", "none", "busybox", "true")
    ok(stack, "run", "-d", "--name", "hostnet", "--network", "host", "busybox", "sleep", "300")
    shown = rows(stack, "--no-trunc", "--format", "{{.Names}}|{{.Command}}|{{.Networks}}|{{.Ports}}")
    # dockerd's list: an argument with a space in single quotes.
    assert shown["quoted"].split("|")[0] == "\"sh -c 'sleep 300'\""
    assert shown["exited"].split("|")[0] == "\"sh -c 'exit 3'\""
    # Networks: a stopped container's too, and host/none by name.
    assert [shown[n].split("|")[1] for n in ("quoted", "exited", "none", "hostnet")] == [
        "bridge", "bridge", "none", "host"]
    # Ports: the exposed port published nowhere listed bare, beside the published one.
    ports = shown["quoted"].split("|")[2].split(", ")
    assert ports[0] == "90/tcp" and ports[1].startswith("127.0.0.1:") and ports[1].endswith("->80/tcp"), ports
    raw = json.loads(ok(stack, "inspect", "exited"))[0]
    assert raw["NetworkSettings"]["Ports"] == {}  # released with the network
    assert "ExposedPorts" not in raw["Config"]  # omitempty, as dockerd
    # A paused container is "Up ... (Paused)".
    ok(stack, "pause", "quoted")
    status = rows(stack, "--format", "{{.Names}}|{{.Status}}")["quoted"]
    assert status.startswith("Up ") and status.endswith(" (Paused)"), status
    ok(stack, "unpause", "quoted")
    # -n counts stopped containers too (the newest first).
    assert ok(stack, "ps", "-n", "2", "--format", "{{.Names}}").split() == ["hostnet", "none"]
    assert ok(stack, "ps", "-l", "--format", "{{.Names}}").split() == ["hostnet"]
    refused = cli(stack, "rename", "exited", "quoted")
    assert refused.returncode == 1
    assert "Error response from daemon: Error when allocating new name: Conflict. The container name " \
           '"/quoted" is already in use' in refused.stderr, refused.stderr


def test_cli_logs_details(stack: Stack, client: docker.DockerClient) -> None:
    ok(stack, "run", "--name", "talk", "busybox", "sh", "-c", "echo one; echo two >&2")
    done = cli(stack, "logs", "--details", "talk")
    assert (done.returncode, done.stdout, done.stderr) == (0, " one\n", " two\n")
    stamped = ok(stack, "logs", "--details", "-t", "talk")
    stamp, _, rest = stamped.partition(" ")
    assert stamp.endswith("Z") and rest == " one\n", stamped
