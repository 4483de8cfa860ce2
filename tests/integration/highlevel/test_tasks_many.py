"""50 containers started concurrently, then all removed with nothing left behind."""

from __future__ import annotations

import asyncio
import signal

from services.gen.skiff.highlevel.v1 import (
    CreateTaskRequest,
    DeleteTaskRequest,
    KillRequest,
    StartRequest,
    TaskStatus,
    WaitRequest,
)
from tests.support.tasks import Bundles, Highlevel, run

COUNT = 50


def test_fifty_concurrent(highlevel: Highlevel, bundles: Bundles, new_id: str) -> None:
    ids = [f"{new_id}-{n}" for n in range(COUNT)]
    bundle_of = {i: bundles.make(i, ["sleep", "1000"]) for i in ids}

    async def body() -> None:
        async with highlevel.client() as tasks:
            async def launch(id_: str) -> None:
                await tasks.create(CreateTaskRequest(id=id_, bundle=str(bundle_of[id_])), timeout=120)
                await tasks.start(StartRequest(id=id_), timeout=60)

            await asyncio.gather(*(launch(i) for i in ids))
            listed = await tasks.list(__import__("services.gen.skiff.highlevel.v1", fromlist=["x"]).ListTasksRequest())
            assert sorted(t.id for t in listed.tasks if t.status == TaskStatus.RUNNING) == sorted(ids)

            async def remove(id_: str) -> None:
                waits = tasks.wait(WaitRequest(id=id_), timeout=60)
                first = await waits.__anext__()
                assert not first.exited
                await tasks.kill(KillRequest(id=id_, signal=signal.SIGKILL))
                final = await waits.__anext__()
                assert final.exited and final.exit.exit_code == 137
                await waits.aclose()
                await tasks.delete(DeleteTaskRequest(id=id_), timeout=60)

            await asyncio.gather(*(remove(i) for i in ids))

    run(body())
    assert highlevel.leftovers(ids) == []
