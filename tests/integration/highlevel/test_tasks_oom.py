"""OOM kills over the gRPC API: a live ``oom`` event while the task runs, and oom_killed at exit."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path
from typing import Any

from services.gen.skiff.highlevel.v1 import (
    CreateTaskRequest,
    DeleteTaskRequest,
    Event,
    EventsRequest,
    EventType,
    KillRequest,
    LogConfig,
    StartRequest,
    StateRequest,
    TaskStatus,
    WaitRequest,
)
from tests.support.tasks import Bundles, Highlevel, run

MiB = 1024 * 1024
# dd's 64 MiB buffer cannot fit under 16 MiB: the OOM killer takes the biggest process, dd.
DD = "dd if=/dev/zero of=/dev/null bs=64M count=1"


def limit_memory(spec: dict[str, Any]) -> None:
    memory: dict[str, Any] = {"limit": 16 * MiB}
    if os.path.exists("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes"):
        memory["swap"] = 16 * MiB  # no swap to escape to: the kill is certain
    spec.setdefault("linux", {}).setdefault("resources", {})["memory"] = memory


class EventLog:
    """Collects the Events stream in the background; waits on it with deadlines."""

    def __init__(self, tasks: Any) -> None:
        self.tasks = tasks
        self.events: list[Event] = []
        self.changed = asyncio.Event()
        self.subscribed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> EventLog:
        self.task = asyncio.create_task(self._listen())
        await asyncio.wait_for(self.subscribed.wait(), 5)
        await asyncio.sleep(0)  # the Events call goes out before the next call on the shared channel
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    async def _listen(self) -> None:
        stream = self.tasks.events(EventsRequest())
        self.subscribed.set()
        async for event in stream:
            self.events.append(event)
            self.changed.set()

    def of(self, id_: str) -> list[EventType]:
        return [e.type for e in self.events if e.id == id_]

    async def until(self, id_: str, type_: EventType, timeout: float) -> None:
        async def seen() -> None:
            while type_ not in self.of(id_):
                self.changed.clear()
                await self.changed.wait()

        try:
            await asyncio.wait_for(seen(), timeout)
        except TimeoutError:
            raise AssertionError(f"no {type_.name} event for {id_} in {timeout} s: {self.of(id_)}") from None


async def wait_exit(tasks: Any, id_: str) -> Any:
    async for message in tasks.wait(WaitRequest(id=id_), timeout=30):
        if message.exited:
            return message.exit
    raise AssertionError("wait ended without an exit")


async def poll_file(path: Path, text: str, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (path.exists() and text in path.read_text()):
        if loop.time() > deadline:
            raise AssertionError(f"`{text}` not in {path} after {timeout} s")
        await asyncio.sleep(0.05)


def test_oom_event_while_running(highlevel: Highlevel, bundles: Bundles, new_id: str) -> None:
    bundle = bundles.make(new_id, ["sh", "-c", f"{DD}; echo dd=$?; exec sleep 30"], edit=limit_memory)
    log_path = highlevel.prefix / "logs" / f"{new_id}.log"

    async def body() -> None:
        async with highlevel.client() as tasks, EventLog(tasks) as events:
            await tasks.create(CreateTaskRequest(id=new_id, bundle=str(bundle), log=LogConfig(path=str(log_path))))
            try:
                await tasks.start(StartRequest(id=new_id))
                await events.until(new_id, EventType.OOM, 20)
                # The event came while the container runs: sh survived its child's kill.
                assert EventType.EXIT not in events.of(new_id)
                assert (await tasks.state(StateRequest(id=new_id))).status == TaskStatus.RUNNING
                await poll_file(log_path, "dd=137", 10)
                await tasks.kill(KillRequest(id=new_id, signal=signal.SIGKILL))
                exit_ = await wait_exit(tasks, new_id)
                assert exit_.exit_code == 137
            finally:
                await tasks.delete(DeleteTaskRequest(id=new_id, force=True))
            await events.until(new_id, EventType.DELETE, 10)
            types = events.of(new_id)
            assert types.count(EventType.OOM) == 1, types
            assert types.index(EventType.START) < types.index(EventType.OOM) < types.index(EventType.EXIT)

    run(body())
    assert highlevel.leftovers([new_id]) == []


def test_init_oom_killed_exit(highlevel: Highlevel, bundles: Bundles, new_id: str) -> None:
    bundle = bundles.make(new_id, DD.split(), edit=limit_memory)

    async def body() -> None:
        async with highlevel.client() as tasks, EventLog(tasks) as events:
            await tasks.create(CreateTaskRequest(id=new_id, bundle=str(bundle)))
            try:
                waiter = asyncio.create_task(wait_exit(tasks, new_id))
                await tasks.start(StartRequest(id=new_id))
                exit_ = await asyncio.wait_for(waiter, 30)
                assert exit_.exit_code == 137 and exit_.signal == signal.SIGKILL and exit_.oom_killed
                state = await tasks.state(StateRequest(id=new_id))
                assert state.status == TaskStatus.STOPPED and state.exit.oom_killed
                await events.until(new_id, EventType.EXIT, 10)
            finally:
                await tasks.delete(DeleteTaskRequest(id=new_id, force=True))
            await events.until(new_id, EventType.DELETE, 10)
            types = events.of(new_id)
            assert types.count(EventType.OOM) == 1, types
            assert types.index(EventType.OOM) < types.index(EventType.EXIT), types

    run(body())
    assert highlevel.leftovers([new_id]) == []
