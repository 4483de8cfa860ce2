"""docker commit freezes a running container while its filesystem is captured (pause=true, Docker's
default), thaws it afterwards even when the commit fails, leaves pause=0 alone, and leaves an already
paused container paused."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import docker
import pytest

from tests.e2e.stack import Stack
from tests.support.tasks import wait_for

# Writes files without a pause: a commit without the freezer would capture a tree in motion.
WRITER = "i=0; while true; do i=$((i+1)); echo $i > /data/f$((i % 20)); echo $i > /n; done"


def _actions(client: docker.DockerClient, container_id: str, since: float) -> list[str]:
    until = time.time() + 0.3
    events = client.events(since=since, until=until, decode=True, filters={"container": container_id})
    return [e["Action"] for e in events if e["Action"] in ("pause", "unpause", "commit")]


def _counter(box: docker.models.containers.Container) -> int:
    """The writer's count; read again when caught between the file's truncation and its write."""

    def read() -> int:
        result = box.exec_run(["cat", "/n"])
        assert result.exit_code == 0, result.output
        return int(result.output or 0)

    return int(wait_for(read, 10, "a count in /n"))


def _writer(client: docker.DockerClient, name: str) -> docker.models.containers.Container:
    box = client.containers.run("busybox", ["sh", "-c", f"mkdir -p /data; {WRITER}"], detach=True, name=name)
    wait_for(lambda: box.exec_run(["test", "-s", "/n"]).exit_code == 0, 15, "the writer's first file")
    return box


def test_commit_pauses_a_running_writer_and_thaws_it(client: docker.DockerClient) -> None:
    box = _writer(client, "writer")
    since = time.time()
    image = box.commit(repository="snap", tag="paused")
    assert _actions(client, box.id, since) == ["pause", "commit", "unpause"]
    box.reload()
    assert box.attrs["State"]["Status"] == "running" and box.attrs["State"]["Paused"] is False
    # Thawed for real: the writer goes on.
    first = _counter(box)
    wait_for(lambda: _counter(box) > first, 10, "the writer writes again after the commit")
    assert image.id in [i.id for i in client.images.list(name="snap")]
    # The image holds what the writer had written.
    out = client.containers.run("snap:paused", ["sh", "-c", "ls /data | wc -l"], remove=True)
    assert int(out) == 20
    box.remove(force=True)


def test_commit_without_pause_and_of_a_paused_container(client: docker.DockerClient) -> None:
    box = _writer(client, "writer2")
    since = time.time()
    client.api.commit(box.id, repository="snap", tag="nopause", pause=False)
    assert _actions(client, box.id, since) == ["commit"]
    box.reload()
    assert box.attrs["State"]["Status"] == "running"

    box.pause()
    since = time.time()
    client.api.commit(box.id, repository="snap", tag="already")
    # Docker's rule: a container already paused is neither paused again nor thawed by the commit.
    assert _actions(client, box.id, since) == ["commit"]
    box.reload()
    assert box.attrs["State"]["Status"] == "paused" and box.attrs["State"]["Paused"] is True
    box.unpause()
    box.remove(force=True)


def test_a_failed_commit_thaws_the_container(client: docker.DockerClient) -> None:
    box = _writer(client, "writer3")
    since = time.time()
    with pytest.raises(docker.errors.APIError) as failed:
        client.api.commit(box.id, repository="Not A Valid Name")
    assert failed.value.status_code == 400
    assert _actions(client, box.id, since) == ["pause", "unpause"]
    box.reload()
    assert box.attrs["State"]["Status"] == "running"
    first = _counter(box)
    wait_for(lambda: _counter(box) > first, 10, "the writer writes again after the failed commit")
    box.remove(force=True)


def test_cli_commit_pause_flag(stack: Stack, client: docker.DockerClient) -> None:
    docker_bin = shutil.which("docker")
    if docker_bin is None:
        pytest.skip("docker CLI not installed")
    box = _writer(client, "writer4")
    env = dict(os.environ, DOCKER_HOST=stack.base_url, DOCKER_CONFIG=str(stack.prefix / "docker-config"))

    def cli(*args: str) -> str:
        done = subprocess.run([docker_bin, *args], capture_output=True, text=True, timeout=60, env=env)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    since = time.time()
    assert cli("commit", "writer4", "snap:cli").startswith("sha256:")
    cli("commit", "--pause=false", "writer4", "snap:cli-nopause")
    assert _actions(client, box.id, since) == ["pause", "commit", "unpause", "commit"]
    box.remove(force=True)
