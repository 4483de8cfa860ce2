"""docker create/run flags and docker cp through the real docker CLI, as against dockerd 20.10 (skipped
when the CLI is not installed): Config.Env's order, a missing working folder made, a host-network
container's host name, refusals at create in dockerd's words, docker cp of the engine's /etc files."""

from __future__ import annotations

import io
import json
import shutil
import socket
import tarfile

import docker
import pytest

from tests.e2e.stack import Stack
from tests.e2e.test_cli_ps import ok
from tests.e2e.test_docker_cli import cli

pytestmark = pytest.mark.skipif(shutil.which("docker") is None, reason="docker CLI not installed")


def refused(stack: Stack, *args: str) -> str:
    done = cli(stack, *args)
    assert done.returncode != 0, (args, done.stdout)
    return done.stderr


def test_cli_run_flags_as_dockerd(stack: Stack, client: docker.DockerClient, tmp_path) -> None:
    env_file = tmp_path / "env.list"
    env_file.write_text("A=1\n# a comment\nPATH=/x:/bin\n")
    ok(stack, "create", "--name", "envs", "-e", "Z=1", "--env-file", str(env_file), "busybox")
    # dockerd: the container's variables as given, then the image's it does not set.
    env = json.loads(ok(stack, "inspect", "-f", "{{json .Config.Env}}", "envs"))
    assert env == ["A=1", "PATH=/x:/bin", "Z=1"], env
    # A missing working folder is made (dockerd's SetupWorkingDirectory); a file there is refused.
    assert ok(stack, "run", "--rm", "-w", "/made/deep", "busybox", "pwd") == "/made/deep\n"
    assert "Cannot mkdir: /etc/passwd is not a directory" in refused(stack, "run", "--rm", "-w", "/etc/passwd",
                                                                      "busybox", "pwd")
    assert ok(stack, "run", "--rm", "--network", "host", "busybox", "hostname") == socket.gethostname() + "\n"
    assert "Invalid signal: NOSIG" in refused(stack, "create", "--stop-signal", "NOSIG", "busybox")
    assert "No such image: nosuchimg:latest" in refused(stack, "run", "--pull", "never", "nosuchimg")
    assert 'plugin "nosuch" not found' in refused(stack, "network", "create", "--driver", "nosuch", "nx")
    assert "This node is not a swarm manager." in refused(stack, "network", "create", "--driver", "overlay", "nx")
    assert ok(stack, "ps", "-a", "--format", "{{.Names}}").split() == ["envs"]  # nothing half-made
    updated = cli(stack, "update", "--kernel-memory", "10m", "envs")
    assert updated.returncode == 0, updated.stderr
    assert "Specifying a kernel memory limit is deprecated" in updated.stdout + updated.stderr
    # Mounts' Mode: "z" for a volume named in -v or --mount, "" for Config.Volumes' (-v /path) and binds.
    ok(stack, "create", "--name", "modes", "-v", "named:/n", "-v", "/anon", "-v", "/tmp:/h",
       "--mount", "type=volume,dst=/am", "busybox")
    modes = ok(stack, "inspect", "-f", "{{range .Mounts}}{{.Destination}}={{.Mode}} {{end}}", "modes").split()
    assert sorted(modes) == ["/am=z", "/anon=", "/h=", "/n=z"], modes


def test_cli_cp_engine_files(stack: Stack, client: docker.DockerClient) -> None:
    ok(stack, "run", "-d", "--name", "box", "--hostname", "named", "busybox", "sleep", "300")
    # /etc/hostname is the engine's file mounted over the image's: docker cp reads that one.
    done = cli(stack, "cp", "box:/etc/hostname", "-")
    assert done.returncode == 0, done.stderr
    with tarfile.open(fileobj=io.BytesIO(done.stdout.encode()), mode="r:") as tar:
        member = tar.extractfile("hostname")
        assert member is not None and member.read() == b"named\n"
    hosts = cli(stack, "cp", "box:/etc/hosts", "-")
    assert hosts.returncode == 0 and "named" in hosts.stdout
    message = refused(stack, "cp", "box:/nonexist", "-")
    assert "Could not find the file /nonexist in container box" in message, message


def test_cli_tmpfs_mounts_listed_as_dockerd(stack: Stack, client: docker.DockerClient) -> None:
    """A --mount type=tmpfs is in inspect's Mounts and ps's; a --tmpfs (HostConfig.Tmpfs) in neither."""
    ok(stack, "run", "-d", "--name", "tm", "--mount", "type=tmpfs,dst=/mt", "--tmpfs", "/t", "busybox", "sleep", "300")
    mounts = json.loads(ok(stack, "inspect", "-f", "{{json .Mounts}}", "tm"))
    assert [(m["Type"], m["Destination"]) for m in mounts] == [("tmpfs", "/mt")]
    assert ok(stack, "ps", "-f", "name=tm", "--format", "{{.Mounts}}|{{.LocalVolumes}}") == "|0\n"
    assert json.loads(ok(stack, "inspect", "-f", "{{json .HostConfig.Tmpfs}}", "tm")) == {"/t": ""}
    # both are mounted all the same
    shown = ok(stack, "exec", "tm", "grep", "-c", " /m\\?t tmpfs", "/proc/mounts")
    assert shown == "2\n", shown
