"""Volumes, binds and tmpfs through the real docker CLI (skipped when it is not installed)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import docker
import pytest

from tests.e2e.stack import Stack
from tests.e2e.test_docker_cli import cli

pytestmark = pytest.mark.skipif(shutil.which("docker") is None, reason="docker CLI not installed")


def ok(stack: Stack, *args: str) -> str:
    done = cli(stack, *args)
    assert done.returncode == 0, (args, done.stderr)
    return done.stdout


def test_cli_volume_lifecycle_and_persistence(stack: Stack, client: docker.DockerClient) -> None:
    assert ok(stack, "volume", "create", "--label", "team=d", "data1").strip() == "data1"
    listed = ok(stack, "volume", "ls", "--format", "{{.Name}} {{.Driver}}")
    assert "data1 local" in listed.splitlines()
    info = json.loads(ok(stack, "volume", "inspect", "data1"))[0]
    assert info["Driver"] == "local" and info["Labels"] == {"team": "d"} and info["Scope"] == "local"
    assert info["Mountpoint"] == str(stack.paths.daemon_lib / "volumes" / "data1" / "_data")
    # Written by one container, read by the next.
    ok(stack, "run", "--rm", "-v", "data1:/data", "busybox", "sh", "-c", "echo kept > /data/f")
    assert ok(stack, "run", "--rm", "-v", "data1:/data:ro", "busybox", "cat", "/data/f") == "kept\n"
    ro = cli(stack, "run", "--rm", "-v", "data1:/data:ro", "busybox", "touch", "/data/g")
    assert ro.returncode != 0
    # In use: refused with 409, even with -f.
    ok(stack, "create", "--name", "user1", "-v", "data1:/data", "busybox", "true")
    busy = cli(stack, "volume", "rm", "-f", "data1")
    assert busy.returncode != 0 and "in use" in busy.stderr
    mounts = json.loads(ok(stack, "inspect", "user1"))[0]["Mounts"]
    assert mounts == [{"Type": "volume", "Name": "data1", "Source": info["Mountpoint"], "Destination": "/data",
                       "Driver": "local", "Mode": "z", "RW": True, "Propagation": ""}]
    ok(stack, "rm", "user1")
    ok(stack, "volume", "rm", "data1")
    assert "data1" not in ok(stack, "volume", "ls", "-q").split()
    missing = cli(stack, "volume", "inspect", "data1")
    assert missing.returncode != 0 and "no such volume" in missing.stderr


def test_cli_volume_populated_from_image_and_anonymous(stack: Stack, client: docker.DockerClient) -> None:
    # /bin replaced by an empty volume would leave no shell: the image's /bin is copied in first.
    listing = ok(stack, "run", "--rm", "-v", "binvol:/bin", "busybox", "ls", "/bin")
    assert "busybox" in listing.split()
    assert (stack.paths.daemon_lib / "volumes" / "binvol" / "_data" / "busybox").exists()
    before = set(ok(stack, "volume", "ls", "-q").split())
    ok(stack, "run", "--rm", "-v", "/scratch", "busybox", "sh", "-c", "echo x > /scratch/y")
    assert set(ok(stack, "volume", "ls", "-q").split()) == before
    ok(stack, "run", "--name", "anon", "-v", "/scratch", "busybox", "true")
    anon = json.loads(ok(stack, "inspect", "anon"))[0]["Mounts"][0]["Name"]
    assert anon in ok(stack, "volume", "ls", "-q").split()
    ok(stack, "rm", "-v", "anon")
    assert anon not in ok(stack, "volume", "ls", "-q").split()
    ok(stack, "volume", "rm", "binvol")


def test_cli_bind_and_tmpfs(stack: Stack, client: docker.DockerClient, tmp_path: Path) -> None:
    host = tmp_path / "shared"
    host.mkdir()
    (host / "in.txt").write_text("from host\n")
    assert ok(stack, "run", "--rm", "-v", f"{host}:/mnt:ro", "busybox", "cat", "/mnt/in.txt") == "from host\n"
    denied = cli(stack, "run", "--rm", "-v", f"{host}:/mnt:ro", "busybox", "touch", "/mnt/new")
    assert denied.returncode != 0 and "Read-only" in denied.stderr
    ok(stack, "run", "--rm", "--mount", f"type=bind,source={host},target=/mnt", "busybox",
       "sh", "-c", "echo back > /mnt/out.txt")
    assert (host / "out.txt").read_text() == "back\n"
    mounts = ok(stack, "run", "--rm", "--tmpfs", "/scratch:size=1m", "busybox", "grep", " /scratch ", "/proc/mounts")
    assert mounts.startswith("tmpfs /scratch tmpfs") and "size=1024k" in mounts and "noexec" in mounts
    typed = ok(stack, "run", "--rm", "--mount", "type=tmpfs,target=/t", "busybox", "grep", " /t ", "/proc/mounts")
    assert typed.startswith("tmpfs /t tmpfs")
