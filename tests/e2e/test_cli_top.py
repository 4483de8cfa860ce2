"""docker top with ps options through the real docker CLI, as dockerd 20.10 shows the host's ps for the
container's processes (skipped when the CLI is not installed)."""

from __future__ import annotations

import shutil

import docker
import pytest

from tests.e2e.stack import Stack
from tests.e2e.test_cli_ps import ok
from tests.e2e.test_docker_cli import cli

pytestmark = pytest.mark.skipif(shutil.which("docker") is None, reason="docker CLI not installed")


def table(stack: Stack, *args: str) -> list[list[str]]:
    return [line.split() for line in ok(stack, "top", "box", *args).splitlines()]


def test_cli_top_ps_options(stack: Stack, client: docker.DockerClient) -> None:
    ok(stack, "run", "-d", "--name", "box", "busybox", "sh", "-c", "sleep 300 & exec sleep 301")
    rows = table(stack)
    assert rows[0] == ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]
    assert sorted(r[-1] for r in rows[1:]) == ["300", "301"]
    rows = table(stack, "-o", "pid,comm")
    assert rows[0] == ["PID", "COMMAND"] and [r[1] for r in rows[1:]] == ["sleep", "sleep"]
    pids = [r[0] for r in rows[1:]]
    # -eo with args; a renamed header; BSD's aux and x.
    assert table(stack, "-eo", "pid,args")[1][1:] == ["sleep", "301"]
    assert table(stack, "-o", "pid=P,ppid,stat")[0] == ["P", "PPID", "STAT"]
    stat = {r[0]: r[2] for r in table(stack, "-o", "pid,ppid,stat")[1:]}
    assert stat[pids[0]] == "Ss"  # the container's first process leads its session
    assert table(stack, "aux")[0] == ["USER", "PID", "%CPU", "%MEM", "VSZ", "RSS", "TTY", "STAT", "START", "TIME",
                                      "COMMAND"]
    assert table(stack, "x")[0] == ["PID", "TTY", "STAT", "TIME", "COMMAND"]
    for args, message in ((["-o", "comm"], "Couldn't find PID field in ps output"),
                          (["-o", "pid,bogus"], 'unknown user-defined format specifier "bogus"')):
        done = cli(stack, "top", "box", *args)
        assert done.returncode == 1 and message in done.stderr, (args, done.stderr)
