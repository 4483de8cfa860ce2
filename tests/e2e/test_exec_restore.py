"""Exec records survive a SIGKILL of the daemon: an exec that ends while the daemon is down reports its
true exit code after the restart, one still running is watched again, and records go with their container."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import docker

from tests.e2e.stack import Stack
from tests.support.tasks import pid_alive, wait_for

# Each exec ends with its own code once its file appears in the container's root.
WAIT_THEN_EXIT = "while [ ! -e /{name} ]; do sleep 0.05; done; exit {code}"


def _detached_exec(api: docker.APIClient, container: str, name: str, code: int) -> str:
    exec_id = api.exec_create(container, ["sh", "-c", WAIT_THEN_EXIT.format(name=name, code=code)])["Id"]
    api.exec_start(exec_id, detach=True)
    return exec_id


def test_exec_exit_while_daemon_down(stack: Stack, client: docker.DockerClient) -> None:
    api = client.api
    box = client.containers.run("busybox", ["sleep", "300"], detach=True, name="execbox")
    box.reload()
    root = Path(f"/proc/{box.attrs['State']['Pid']}/root")
    ends_down = _detached_exec(api, box.id, "down", 7)
    ends_after = _detached_exec(api, box.id, "after", 5)
    done_before = api.exec_create(box.id, ["sh", "-c", "exit 3"])["Id"]
    api.exec_start(done_before, detach=True)
    wait_for(lambda: api.exec_inspect(done_before)["ExitCode"] == 3, 15, "the first exec's exit")
    never_started = api.exec_create(box.id, ["true"])["Id"]
    pid = api.exec_inspect(ends_down)["Pid"]
    assert api.exec_inspect(ends_down)["Running"] is True and pid > 0

    records = stack.paths.daemon_lib / "execs"
    saved = {p.stem: json.loads(p.read_text()) for p in records.glob("*.json")}
    assert set(saved) == {ends_down, ends_after, done_before, never_started}
    assert saved[ends_down]["running"] is True and saved[ends_down]["pid"] == pid

    daemon = stack.procs["services.daemon"]
    daemon.send_signal(signal.SIGKILL)
    daemon.wait(10)
    try:
        (root / "down").touch()
        wait_for(lambda: not pid_alive(pid), 15, "the exec's end while the daemon is down")
    finally:
        stack.start("services.daemon")

    restored = docker.DockerClient(base_url=stack.base_url, timeout=30)
    try:
        info = restored.api.exec_inspect(ends_down)
        assert (info["Running"], info["ExitCode"], info["Pid"]) == (False, 7, pid)
        assert info["ProcessConfig"]["arguments"][-1] == WAIT_THEN_EXIT.format(name="down", code=7)
        assert restored.api.exec_inspect(done_before)["ExitCode"] == 3
        still = restored.api.exec_inspect(ends_after)
        assert still["Running"] is True and still["ExitCode"] is None
        # The one still running is watched again: its exit after the restart is seen too.
        (root / "after").touch()
        wait_for(lambda: restored.api.exec_inspect(ends_after)["ExitCode"] == 5, 15, "the exit after restart")
        assert restored.api.exec_inspect(ends_after)["Running"] is False
        # A created exec can still start after the restart.
        restored.api.exec_start(never_started, detach=True)
        wait_for(lambda: restored.api.exec_inspect(never_started)["ExitCode"] == 0, 15, "the late start's exit")
        assert json.loads((records / f"{ends_down}.json").read_text())["exit_code"] == 7

        restored.containers.get("execbox").remove(force=True)
        wait_for(lambda: not list(records.glob("*.json")), 15, "exec records removed with their container")
        try:
            restored.api.exec_inspect(ends_down)
            raise AssertionError("exec record outlived its container")
        except docker.errors.NotFound:
            pass
    finally:
        restored.close()
