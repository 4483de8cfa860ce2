"""The shim zygote: forked shims look and behave like spawned ones and outlive the zygote."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from services.gen.skiff.highlevel.v1 import (
    CreateTaskRequest,
    DeleteTaskRequest,
    KillRequest,
    StartRequest,
    StateRequest,
    TaskStatus,
    WaitRequest,
)
from tests.support.tasks import Bundles, Highlevel, pid_alive, run, wait_for


def ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@pytest.mark.skipif(os.environ.get("SKIFF_SHIM_ZYGOTE") == "0", reason="shims spawned directly (SKIFF_SHIM_ZYGOTE=0)")
def test_shims_outlive_a_killed_zygote(highlevel: Highlevel, bundles: Bundles, new_id: str) -> None:
    ids = [f"{new_id}a", f"{new_id}b"]
    zygote_pid_file = highlevel.paths.highlevel_run / "zygote.sock.pid"

    async def stop(tasks, id_: str) -> None:  # noqa: ANN001
        await tasks.kill(KillRequest(id=id_, signal=signal.SIGKILL))
        async for message in tasks.wait(WaitRequest(id=id_), timeout=30):
            if message.exited:
                break
        await tasks.delete(DeleteTaskRequest(id=id_))

    async def body() -> None:
        async with highlevel.client() as tasks:
            created: list[str] = []
            try:
                await tasks.create(CreateTaskRequest(id=ids[0], bundle=str(bundles.make(ids[0], ["sleep", "1000"]))))
                created.append(ids[0])
                await tasks.start(StartRequest(id=ids[0]))
                first = (await tasks.state(StateRequest(id=ids[0]))).shim_pid
                zygote = int(wait_for(lambda: zygote_pid_file.exists() and zygote_pid_file.read_text(), 5,
                                      "zygote pid file"))
                # Its own session, the zygote's own child (no launcher in between), titled with its state folder.
                assert os.getsid(first) not in (os.getsid(0), os.getsid(zygote)) and ppid(first) == zygote
                state_dir = str(highlevel.paths.highlevel_run / "t" / ids[0])
                assert state_dir.encode() in Path(f"/proc/{first}/cmdline").read_bytes()

                os.kill(zygote, signal.SIGKILL)
                wait_for(lambda: not pid_alive(zygote), 5, "zygote gone")
                assert pid_alive(first) and ppid(first) != zygote  # re-parented, still serving
                assert (await tasks.state(StateRequest(id=ids[0]))).status == TaskStatus.RUNNING

                # The next create starts a new zygote (or spawns directly): it works either way.
                await tasks.create(CreateTaskRequest(id=ids[1], bundle=str(bundles.make(ids[1], ["sleep", "1000"]))))
                created.append(ids[1])
                await tasks.start(StartRequest(id=ids[1]))
                assert (await tasks.state(StateRequest(id=ids[1]))).status == TaskStatus.RUNNING
                assert int(zygote_pid_file.read_text()) != zygote
            finally:
                for id_ in created:
                    await stop(tasks, id_)

    run(body())
    assert highlevel.leftovers(ids) == []
