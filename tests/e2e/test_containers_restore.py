"""Live restore: SIGKILL the daemon (and separately the apiserver) while containers run, one exiting meanwhile."""

from __future__ import annotations

import signal
from pathlib import Path

import docker
import pytest

from tests.e2e.stack import Stack
from tests.support.tasks import pid_alive, wait_for

# The short container exits 7 once this file appears in its root filesystem.
WAITER = "while [ ! -e /go ]; do sleep 0.05; done; echo bye; exit 7"


def _kill(stack: Stack, module: str) -> None:
    proc = stack.procs[module]
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


@pytest.mark.parametrize("module", ["services.daemon", "services.apiserver"])
def test_restore_after_sigkill(stack: Stack, client: docker.DockerClient, module: str) -> None:
    long = client.containers.run("busybox", ["sh", "-c", "echo up; sleep 300"], detach=True, name="long")
    short = client.containers.run("busybox", ["sh", "-c", WAITER], detach=True, name="short")
    pol = client.containers.run("busybox", ["sh", "-c", WAITER], detach=True, name="pol",
                                restart_policy={"Name": "always"})
    for c in (long, short, pol):
        c.reload()  # run() returns the record as created; the pid comes with the start
    pids = {c.name: c.attrs["State"]["Pid"] for c in (long, short, pol)}
    _kill(stack, module)
    try:
        # The container's root as the host sees it: its init's /proc root.
        for name in ("short", "pol"):
            (Path(f"/proc/{pids[name]}/root") / "go").touch()
        gone = ("short", "pol")
        wait_for(lambda: not any(pid_alive(pids[n]) for n in gone), 15, "exits while the service is down")
    finally:
        stack.start(module)
    restored = docker.DockerClient(base_url=stack.base_url, timeout=30)
    try:
        running = {c.name: c.attrs["State"]["Pid"] for c in restored.containers.list() if c.name != "pol"}
        assert running == {"long": pids["long"]}
        # The restart policy applies to what exited meanwhile.
        wait_for(lambda: restored.containers.get("pol").attrs["RestartCount"] >= 1, 15, "pol restarted")
        state = restored.containers.get("short").attrs["State"]
        assert state["Status"] == "exited" and state["ExitCode"] == 7
        assert restored.containers.get("short").logs() == b"bye\n"
        box = restored.containers.get("long")
        assert box.logs() == b"up\n"
        assert box.exec_run(["echo", "alive"]).output == b"alive\n"
        box.stop(timeout=1)
        assert box.wait(timeout=15)["StatusCode"] == 137
    finally:
        restored.close()
