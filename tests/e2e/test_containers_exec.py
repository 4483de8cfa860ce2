"""Container operations, docker-py: exec (plain, stdin, tty, detached, inspect), attach stdin, restart, 304s, events."""

from __future__ import annotations

import socket
import time

import docker
import pytest

from tests.e2e.stack import Stack
from tests.support.tasks import wait_for


def _read_until_eof(sock: socket.socket, deadline: float) -> bytes:
    data = b""
    while time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    raise AssertionError(f"no EOF before the deadline; got {data!r}")


def test_exec_output_exit_code_and_inspect(client: docker.DockerClient) -> None:
    box = client.containers.run("busybox", ["sleep", "300"], detach=True, environment=["FOO=bar"])
    code, out = box.exec_run(["sh", "-c", "echo out; echo err >&2; echo $FOO; exit 3"], demux=True)
    assert code == 3
    assert out == (b"out\nbar\n", b"err\n")
    code, out = box.exec_run(["cat", "/etc/hostname-nope"])
    assert code == 1 and b"No such file" in out
    code, out = box.exec_run("tty", tty=True)
    assert code == 0 and out.startswith(b"/dev/pts/"), out
    api = client.api
    exec_id = api.exec_create(box.id, ["sh", "-c", "sleep 0.2; exit 7"])["Id"]
    assert api.exec_inspect(exec_id)["Running"] is False
    api.exec_start(exec_id, detach=True)
    wait_for(lambda: api.exec_inspect(exec_id)["ExitCode"] == 7, 10, "detached exec exit")
    with pytest.raises(docker.errors.NotFound):
        api.exec_inspect("nope")
    env = box.attrs["Config"]["Env"]
    assert "FOO=bar" in env and any(e.startswith("PATH=") for e in env)
    box.remove(force=True)


def test_exec_stdin_forwarded(client: docker.DockerClient) -> None:
    box = client.containers.run("busybox", ["sleep", "300"], detach=True)
    exec_id = client.api.exec_create(box.id, ["sh", "-c", "read line; echo got:$line"], stdin=True)["Id"]
    sock = client.api.exec_start(exec_id, socket=True)._sock
    try:
        sock.sendall(b"hello\n")
        data = _read_until_eof(sock, time.monotonic() + 15)
    finally:
        sock.close()
    assert data[8:] == b"got:hello\n" and data[0] == 1, data
    wait_for(lambda: client.api.exec_inspect(exec_id)["ExitCode"] == 0, 10, "exec exit")
    box.remove(force=True)


def test_attach_stdin_and_304s_and_restart(client: docker.DockerClient) -> None:
    body = {"Image": "busybox", "Cmd": ["sh", "-c", "read line; echo got:$line"], "OpenStdin": True,
            "StdinOnce": True, "AttachStdin": True}
    created = client.api._result(client.api._post_json(client.api._url("/containers/create"), data=body), True)
    box = client.containers.get(created["Id"])
    sock = client.api.attach_socket(box.id, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})._sock
    try:
        box.start()
        sock.sendall(b"world\n")
        data = _read_until_eof(sock, time.monotonic() + 15)
    finally:
        sock.close()
    assert b"got:world\n" in data, data
    assert box.wait(timeout=15)["StatusCode"] == 0
    other = client.containers.run("busybox", ["sleep", "300"], detach=True)
    assert client.api._post(client.api._url("/containers/{0}/start", other.id)).status_code == 304
    pid = other.attrs["State"]["Pid"]
    other.restart(timeout=1)
    other.reload()
    assert other.status == "running" and other.attrs["State"]["Pid"] != pid
    other.stop(timeout=1)
    assert client.api._post(client.api._url("/containers/{0}/stop", other.id)).status_code == 304
    box.remove(force=True)
    other.remove(force=True)


def test_events_since_until(client: docker.DockerClient, stack: Stack) -> None:
    since = time.time()
    box = client.containers.run("busybox", ["sh", "-c", "read x; exit 4"], detach=True, name="ev-box",
                                stdin_open=True)
    assert box.exec_run(["true"]).exit_code == 0
    box.kill()
    box.wait(timeout=15)
    box.remove()
    until = time.time() + 0.5
    events = list(client.events(since=since, until=until, decode=True, filters={"container": "ev-box"}))
    actions = [e["Action"] for e in events]
    assert actions == ["create", "start", "exec_create: true", "exec_start: true", "exec_die: true", "kill", "die",
                       "destroy"], actions
    exec_die = [e for e in events if e["Action"].startswith("exec_die")][0]
    assert exec_die["Actor"]["Attributes"]["exitCode"] == "0"
    die = events[-2]
    assert die["Type"] == "container" and die["Actor"]["ID"] == box.id
    assert die["Actor"]["Attributes"]["exitCode"] == "137" and die["Actor"]["Attributes"]["name"] == "ev-box"
    assert die["timeNano"] // 1_000_000_000 == die["time"]


def test_restart_always_with_backoff_then_stop(client: docker.DockerClient) -> None:
    started = time.monotonic()
    box = client.containers.run("busybox", ["sh", "-c", "exit 1"], detach=True, restart_policy={"Name": "always"})
    wait_for(lambda: client.containers.get(box.id).attrs["RestartCount"] >= 3, 20, "three restarts")
    # Docker's back-off: 100, 200, 400 ms between the runs at least.
    assert time.monotonic() - started >= 0.7
    box.stop(timeout=1)
    attrs = client.containers.get(box.id).attrs
    assert attrs["State"]["Status"] == "exited"
    assert attrs["HostConfig"]["RestartPolicy"]["Name"] == "always"
    box.remove(force=True)


def test_pause_blocks_exec_and_stop_thaws(client: docker.DockerClient) -> None:
    box = client.containers.run("busybox", ["sleep", "300"], detach=True)
    box.pause()
    assert client.containers.get(box.id).status == "paused"
    with pytest.raises(docker.errors.APIError) as info:
        box.exec_run(["true"])
    assert info.value.status_code == 409
    box.stop(timeout=1)
    assert client.containers.get(box.id).attrs["State"]["Status"] == "exited"
    box.remove()
