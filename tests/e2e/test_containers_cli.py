"""Container operations, real docker CLI: exec -it under a pty, attach, restart, events, stats, top, policies, OOM."""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import docker
import pytest

from tests.e2e.stack import Stack
from tests.e2e.test_docker_cli import cli
from tests.support.tasks import wait_for

pytestmark = pytest.mark.skipif(shutil.which("docker") is None, reason="docker CLI not installed")


def test_cli_exec_plain_and_tty(stack: Stack, client: docker.DockerClient) -> None:
    assert cli(stack, "run", "-d", "--name", "ex", "busybox", "sleep", "300").returncode == 0
    plain = cli(stack, "exec", "-e", "X=1", "ex", "sh", "-c", "echo $X; exit 5")
    assert plain.returncode == 5 and plain.stdout == "1\n", plain.stderr
    piped = subprocess.run(["docker", "exec", "-i", "ex", "sh", "-c", "read l; echo got:$l"], input="abc\n",
                           capture_output=True, text=True, timeout=30,
                           env={**_env(stack)})
    assert piped.stdout == "got:abc\n", piped.stderr
    # -it needs a terminal: script(1) gives the CLI a pty; the exec's stdin comes through it.
    command = "docker exec -it ex sh -c 'tty; stty size; read l; echo got:$l'"
    tty = subprocess.run(["script", "-qec", command, "/dev/null"], input="xyz\n", capture_output=True, text=True,
                         timeout=30, env={**_env(stack), "COLUMNS": "100", "LINES": "30"})
    assert tty.returncode == 0, tty.stdout + tty.stderr
    assert "/dev/pts/" in tty.stdout and "got:xyz" in tty.stdout, tty.stdout


def _env(stack: Stack) -> dict[str, str]:
    import os

    return dict(os.environ, DOCKER_HOST=stack.base_url, DOCKER_CONFIG=str(stack.prefix / "docker-config"))


def test_cli_attach_restart_top_stats_events(stack: Stack, client: docker.DockerClient) -> None:
    since = str(time.time())
    box = cli(stack, "run", "-d", "--name", "att", "busybox", "sh", "-c",
              "trap 'exit 0' TERM; i=0; while true; do echo tick$i; i=$((i+1)); sleep 0.1; done")
    assert box.returncode == 0, box.stderr
    attach = subprocess.Popen(["docker", "attach", "--no-stdin", "att"], stdout=subprocess.PIPE, text=True,
                              env=_env(stack))
    try:
        assert attach.stdout is not None
        assert attach.stdout.readline().startswith("tick")
    finally:
        attach.kill()
        attach.wait(10)
    top = cli(stack, "top", "att")
    assert top.returncode == 0, top.stderr
    assert top.stdout.split()[:8] == ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]
    assert "sh -c" in top.stdout
    stats = cli(stack, "stats", "--no-stream", "--format", "{{json .}}", "att")
    assert stats.returncode == 0, stats.stderr
    row = json.loads(stats.stdout)
    assert row["Name"] == "att" and row["MemUsage"] and row["PIDs"] != "0", row
    pid = client.containers.get("att").attrs["State"]["Pid"]
    assert cli(stack, "restart", "-t", "2", "att").returncode == 0
    attrs = client.containers.get("att").attrs
    assert attrs["State"]["Running"] and attrs["State"]["Pid"] != pid
    assert cli(stack, "pause", "att").returncode == 0
    assert client.containers.get("att").status == "paused"
    assert cli(stack, "unpause", "att").returncode == 0
    assert cli(stack, "rename", "att", "att2").returncode == 0
    assert cli(stack, "update", "--memory", "64m", "--memory-swap", "-1", "att2").returncode == 0
    assert client.containers.get("att2").attrs["HostConfig"]["Memory"] == 64 * 1024 * 1024
    assert cli(stack, "stop", "-t", "2", "att2").returncode == 0
    until = str(time.time() + 0.2)
    events = cli(stack, "events", "--since", since, "--until", until, "--filter", "type=container",
                 "--format", "{{.Action}}")
    assert events.returncode == 0, events.stderr
    actions = events.stdout.split()
    for wanted in ("create", "start", "kill", "die", "stop", "restart", "pause", "unpause", "rename", "update"):
        assert wanted in actions, (wanted, actions)


def test_cli_restart_policy_on_failure_and_oom(stack: Stack, client: docker.DockerClient) -> None:
    run = cli(stack, "run", "-d", "--name", "flaky", "--restart", "on-failure:2", "busybox", "sh", "-c", "exit 3")
    assert run.returncode == 0, run.stderr

    def settled() -> bool:
        attrs = client.containers.get("flaky").attrs
        return attrs["RestartCount"] == 2 and attrs["State"]["Status"] == "exited"

    wait_for(settled, 20, "two restarts then exited")
    attrs = client.containers.get("flaky").attrs
    assert attrs["State"]["ExitCode"] == 3
    assert attrs["HostConfig"]["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 2}
    oom = cli(stack, "run", "--name", "oom", "-m", "16m", "--memory-swap", "16m", "busybox", "sh", "-c",
              "exec dd if=/dev/zero of=/dev/null bs=64M count=1")
    assert oom.returncode == 137, (oom.returncode, oom.stderr)
    state = client.containers.get("oom").attrs["State"]
    assert state["OOMKilled"] is True and state["ExitCode"] == 137
