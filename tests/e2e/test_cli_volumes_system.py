"""docker volume create/ls/prune and docker system df through the real docker CLI, as against dockerd
(skipped when the CLI is not installed): refusals naming the volume, filters' words, prune's label!
and its API-version rule, the space a prune reclaims, images' shared size."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import docker
import pytest

from tests.e2e.stack import Stack
from tests.e2e.test_cli_ps import ok
from tests.e2e.test_docker_cli import cli

pytestmark = pytest.mark.skipif(shutil.which("docker") is None, reason="docker CLI not installed")


def cli_at(stack: Stack, api: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI speaking an older API version, as a client of dockerd 20.10 does."""
    env = dict(os.environ, DOCKER_HOST=stack.base_url, DOCKER_CONFIG=str(stack.prefix / "docker-config"),
               DOCKER_API_VERSION=api)
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=60, env=env)


def test_cli_volume_refusals_and_prune(stack: Stack, client: docker.DockerClient) -> None:
    for args, message in ((["--driver", "nosuch", "v2"],
                           'create v2: error looking up volume plugin nosuch: plugin "nosuch" not found'),
                          (["--opt", "foo=bar", "v3"], 'create v3: invalid option: "foo"')):
        done = cli(stack, "volume", "create", *args)
        assert done.returncode == 1 and message in done.stderr, done.stderr
    done = cli(stack, "volume", "ls", "-f", "nosuch=1")
    assert done.returncode == 1 and "Invalid filter 'nosuch'" in done.stderr
    assert ok(stack, "volume", "ls", "-q") == ""  # nothing half-made by the refusals
    ok(stack, "volume", "create", "--label", "keep=1", "named-keep")
    ok(stack, "volume", "create", "--label", "drop=1", "named-drop")
    ok(stack, "run", "--name", "writer", "-v", "/anon", "busybox", "sh", "-c",
       "mkdir /anon/d && head -c 1000 /dev/zero > /anon/d/f && ln /anon/d/f /anon/g")
    ok(stack, "rm", "writer")
    # API 1.42 and later: only anonymous volumes; the space is the files' bytes (a hard link once).
    out = ok(stack, "volume", "prune", "-f")
    assert out.splitlines()[0] == "Deleted Volumes:" and out.splitlines()[-1] == "Total reclaimed space: 1kB", out
    assert sorted(ok(stack, "volume", "ls", "-q").split()) == ["named-drop", "named-keep"]
    # An older client's prune takes named volumes too; label! keeps those that match it.
    done = cli_at(stack, "1.41", "volume", "prune", "-f", "--filter", "label!=keep")
    assert done.returncode == 0 and done.stdout.split()[:3] == ["Deleted", "Volumes:", "named-drop"], done
    assert "Total reclaimed space: 0B" in done.stdout
    assert ok(stack, "volume", "ls", "-q").split() == ["named-keep"]


def test_cli_system_df_shared_size(stack: Stack, client: docker.DockerClient) -> None:
    ok(stack, "create", "--name", "user", "busybox", "true")
    rows = [json.loads(line) for line in ok(stack, "system", "df", "--format", "json").splitlines()]
    images = next(r for r in rows if r["Type"] == "Images")
    # The image is in use: nothing of it is reclaimable (SharedSize known, not -1).
    assert images["Active"] == "1" and images["Reclaimable"] == "0B (0%)", images
    assert [i["SharedSize"] for i in client.api.df()["Images"]] == [0]


def test_cli_info_host_facts(stack: Stack, client: docker.DockerClient) -> None:
    """docker info tells the host's cgroup version and what its controllers allow, as dockerd does."""
    v2 = Path("/sys/fs/cgroup/cgroup.controllers").exists()
    shown = ok(stack, "info", "--format", "{{.CgroupVersion}} {{.MemoryLimit}} {{.PidsLimit}} {{.CPUShares}} "
               "{{json .SecurityOptions}} {{json .Plugins.Network}}").split()
    assert shown[0] == ("2" if v2 else "1")
    if not v2 and Path("/sys/fs/cgroup/memory").is_dir():
        assert shown[1] == "true"
    if not v2 and Path("/sys/fs/cgroup/pids").is_dir():
        assert shown[2] == "true"
    assert shown[4] == '["name=seccomp,profile=default"]' and shown[5] == '["bridge","host","null"]'
    assert ok(stack, "info", "--format", "{{.SystemTime}}").strip().endswith("Z")
