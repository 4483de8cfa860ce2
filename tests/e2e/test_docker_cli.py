"""The real docker CLI against the whole stack (skipped when it is not installed)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import docker
import pytest

from tests.e2e.stack import Stack

pytestmark = pytest.mark.skipif(shutil.which("docker") is None, reason="docker CLI not installed")


def cli(stack: Stack, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DOCKER_HOST=stack.base_url, DOCKER_CONFIG=str(stack.prefix / "docker-config"))
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, env=env)


def test_cli_run_ps_inspect(stack: Stack, client: docker.DockerClient) -> None:
    run = cli(stack, "run", "--rm", "busybox", "echo", "hi")
    assert run.returncode == 0, run.stderr
    assert run.stdout == "hi\n"
    created = cli(stack, "run", "-d", "--name", "cli-box", "--label", "k=v", "busybox", "sleep", "300")
    assert created.returncode == 0, created.stderr
    ps = cli(stack, "ps", "-a", "--filter", "label=k=v", "--format", "{{.Names}} {{.State}}")
    assert ps.stdout.split("\n")[0] == "cli-box running", ps.stderr
    inspect = cli(stack, "inspect", "cli-box")
    assert inspect.returncode == 0, inspect.stderr
    assert json.loads(inspect.stdout)[0]["State"]["Running"] is True
    assert cli(stack, "rm", "-f", "cli-box").returncode == 0
    missing = cli(stack, "inspect", "cli-box")
    assert missing.returncode != 0 and "No such" in missing.stderr
