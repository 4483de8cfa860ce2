"""Live restore: SIGKILL the daemon (and separately the apiserver) while containers run, one exiting meanwhile."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import docker
import pytest
from grpclib.client import Channel

from services.gen.skiff.highlevel import v1 as hl
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


def _delete_task(stack: Stack, container_id: str) -> None:
    async def delete() -> None:
        channel = Channel(path=str(stack.paths.highlevel_socket))
        try:
            await hl.TasksStub(channel).delete(hl.DeleteTaskRequest(id=container_id, force=True))
        finally:
            channel.close()

    asyncio.run(delete())


def test_rm_containers_that_ended_while_the_daemon_was_down_are_removed(stack: Stack,
                                                                         client: docker.DockerClient) -> None:
    """A --rm container's exit is not saved (it is removed right after): one that exited while the daemon
    was down, or whose task was already deleted by a removal cut short, is removed at the restart."""
    exited = client.containers.run("busybox", ["sh", "-c", WAITER], detach=True, auto_remove=True, name="rm-exited")
    deleted = client.containers.run("busybox", ["sleep", "300"], detach=True, auto_remove=True, name="rm-deleted")
    exited.reload()
    pid = exited.attrs["State"]["Pid"]
    _kill(stack, "services.daemon")
    try:
        (Path(f"/proc/{pid}/root") / "go").touch()
        wait_for(lambda: not pid_alive(pid), 15, "the exit while the daemon is down")
        _delete_task(stack, deleted.id)  # as a removal cut short after its task delete
    finally:
        stack.start("services.daemon")
    restored = docker.DockerClient(base_url=stack.base_url, timeout=30)
    try:
        wait_for(lambda: not restored.containers.list(all=True, filters={"name": "rm-"}), 15, "both removed")
    finally:
        restored.close()
