"""Container operations with the real docker CLI (docker-py for stats): logs -f across rotation, since/until/tail,
short-lived output, live events, the restarting state, kill of a paused container, streamed stats."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from datetime import datetime
from pathlib import Path

import docker
import pytest

from tests.e2e.stack import Stack
from tests.e2e.test_docker_cli import cli
from tests.support.tasks import wait_for

pytestmark = pytest.mark.skipif(shutil.which("docker") is None, reason="docker CLI not installed")


def _env(stack: Stack) -> dict[str, str]:
    return dict(os.environ, DOCKER_HOST=stack.base_url, DOCKER_CONFIG=str(stack.prefix / "docker-config"))


def _popen(stack: Stack, out: Path, *args: str) -> subprocess.Popen[bytes]:
    with open(out, "wb") as sink:
        return subprocess.Popen(["docker", *args], stdout=sink, stderr=subprocess.STDOUT, env=_env(stack))


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def test_logs_follow_across_rotation(stack: Stack, client: docker.DockerClient, tmp_path: Path) -> None:
    count = 2000
    # About 20 rotations of 10 KB in ~2 s; the container keeps running afterwards.
    script = (f"i=0; while [ $i -lt {count} ]; do echo line-$i; i=$((i+1)); "
              "[ $((i % 25)) -eq 0 ] && sleep 0.02; done; exec sleep 300")
    run = cli(stack, "run", "-d", "--name", "rot", "--log-opt", "max-size=10k", "--log-opt", "max-file=3",
              "busybox", "sh", "-c", script)
    assert run.returncode == 0, run.stderr
    out = tmp_path / "follow.txt"
    follower = _popen(stack, out, "logs", "-f", "rot")
    try:
        last = f"line-{count - 1}\n"
        wait_for(lambda: out.read_text().endswith(last) or follower.poll() is not None, 30, "the last line")
        lines = out.read_text().splitlines()
        assert lines == [f"line-{i}" for i in range(count)], (len(lines), [x for x in lines if "line" not in x])
        attrs = client.containers.get("rot").attrs
        assert attrs["HostConfig"]["LogConfig"]["Config"] == {"max-size": "10k", "max-file": "3"}  # as given
        log_path = attrs["LogPath"]
        assert os.path.exists(log_path + ".1") and os.path.exists(log_path + ".2")
        assert not os.path.exists(log_path + ".3")
        assert follower.poll() is None  # still following the running container
        assert cli(stack, "kill", "rot").returncode == 0
        follower.wait(15)  # the follower ends with the container
    finally:
        _stop(follower)


def _stamp(line: str) -> float:
    head, _, frac = line.split(" ", 1)[0].rstrip("Z").partition(".")
    return datetime.fromisoformat(head + "+00:00").timestamp() + float(f"0.{frac}")


def test_logs_since_until_tail_and_short_lived_output(stack: Stack, client: docker.DockerClient) -> None:
    run = cli(stack, "run", "--name", "sut", "busybox", "sh", "-c",
              "echo one; sleep 0.2; echo two; sleep 0.2; echo three")
    assert run.returncode == 0 and run.stdout == "one\ntwo\nthree\n", run.stderr
    stamped = cli(stack, "logs", "--timestamps", "sut").stdout.splitlines()
    assert [line.split(" ", 1)[1] for line in stamped] == ["one", "two", "three"], stamped
    t1, t2, t3 = (_stamp(line) for line in stamped)
    assert t1 < t2 < t3
    since = cli(stack, "logs", "--since", f"{(t1 + t2) / 2:.6f}", "sut")
    assert since.returncode == 0 and since.stdout == "two\nthree\n", since
    until = cli(stack, "logs", "--until", f"{(t2 + t3) / 2:.6f}", "sut")
    assert until.returncode == 0 and until.stdout == "one\ntwo\n", until
    both = cli(stack, "logs", "--since", f"{(t1 + t2) / 2:.6f}", "--until", f"{(t2 + t3) / 2:.6f}", "sut")
    assert both.stdout == "two\n", both
    assert cli(stack, "logs", "--tail", "2", "sut").stdout == "two\nthree\n"
    assert cli(stack, "logs", "--tail", "0", "sut").stdout == ""
    # A short-lived container's output is never lost.
    for n in range(20):
        echo = cli(stack, "run", "--rm", "busybox", "echo", str(n), timeout=20)
        assert (echo.returncode, echo.stdout) == (0, f"{n}\n"), (n, echo)
    streams = cli(stack, "run", "--rm", "busybox", "sh", "-c", "echo out; echo err >&2")
    assert (streams.returncode, streams.stdout, streams.stderr) == (0, "out\n", "err\n"), streams
    assert [c.name for c in client.containers.list(all=True)] == ["sut"]


def test_events_and_stats_streamed(stack: Stack, client: docker.DockerClient, tmp_path: Path) -> None:
    out = tmp_path / "events.txt"
    # --since covers the moment between the process start and its subscription; the rest comes live.
    since = f"{time.time():.6f}"
    events = _popen(stack, out, "events", "--since", since, "--filter", "type=container", "--format", "{{.Action}}")
    try:
        run = cli(stack, "run", "--rm", "--name", "ev", "busybox", "true")
        assert run.returncode == 0, run.stderr

        def seen() -> list[str]:
            actions = out.read_text().split()
            return actions if "destroy" in actions else []

        actions = wait_for(seen, 15, "destroy in the live events")
        wanted = [a for a in actions if a in ("create", "start", "die", "destroy")]
        assert wanted == ["create", "start", "die", "destroy"], actions
        assert events.poll() is None  # still streaming
    finally:
        _stop(events)
    _stats_streamed(client)


def test_restarting_state_and_kill_of_paused(stack: Stack, client: docker.DockerClient) -> None:
    run = cli(stack, "run", "-d", "--name", "loop", "--restart", "always", "busybox", "sh", "-c", "exit 1")
    assert run.returncode == 0, run.stderr

    def restarting() -> bool:
        state = client.containers.get("loop").attrs["State"]
        return state["Status"] == "restarting" and state["Restarting"] is True

    wait_for(restarting, 15, "State.Status restarting during the back-off")
    ps = cli(stack, "ps", "--filter", "name=loop", "--format", "{{.Status}}")
    assert ps.stdout.startswith("Restarting"), ps
    assert cli(stack, "stop", "-t", "1", "loop").returncode == 0
    state = client.containers.get("loop").attrs["State"]
    assert state["Status"] == "exited" and state["Restarting"] is False and state["ExitCode"] == 1, state

    box = cli(stack, "run", "-d", "--name", "frozen", "busybox", "sh", "-c",
              "trap 'exit 7' TERM; echo ready; while :; do sleep 1 & wait; done")
    assert box.returncode == 0, box.stderr
    wait_for(lambda: cli(stack, "logs", "frozen").stdout == "ready\n", 10, "the trap installed")
    assert cli(stack, "pause", "frozen").returncode == 0
    assert client.containers.get("frozen").status == "paused"
    kill = cli(stack, "kill", "-s", "TERM", "frozen")
    assert kill.returncode == 0, kill.stderr
    assert cli(stack, "wait", "frozen", timeout=15).stdout == "7\n"
    assert client.containers.get("frozen").attrs["State"]["Status"] == "exited"


def _stats_streamed(client: docker.DockerClient) -> None:
    box = client.containers.run("busybox", ["sleep", "300"], detach=True)
    samples = []
    stream = box.stats(stream=True, decode=True)
    deadline = time.monotonic() + 10  # samples come once a second
    try:
        for sample in stream:
            samples.append(sample)
            if len(samples) == 2 or time.monotonic() > deadline:
                break
    finally:
        stream.close()
    assert len(samples) == 2
    for sample in samples:
        assert sample["cpu_stats"]["cpu_usage"]["total_usage"] > 0, sample
        assert sample["memory_stats"]["usage"] > 0, sample
    assert samples[1]["precpu_stats"]["cpu_usage"]["total_usage"] > 0
    box.remove(force=True)
