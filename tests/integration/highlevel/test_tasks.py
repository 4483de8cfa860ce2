"""Tasks over the gRPC API of a real skiff-highlevel: run, exec, attach with a pty, kill, pause."""

from __future__ import annotations

import asyncio
import json
import signal

from services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from services.common.grpc import call
from services.gen.skiff.highlevel.v1 import (
    AttachRequest,
    CreateTaskRequest,
    DeleteTaskRequest,
    EventsRequest,
    EventType,
    ExecRequest,
    KillRequest,
    LogConfig,
    ResizePtyRequest,
    StartRequest,
    StateRequest,
    StdinChunk,
    TaskRequest,
    TaskStatus,
    UpdateRequest,
    WaitRequest,
)
from tests.support.tasks import Bundles, Highlevel, pid_alive, run


async def wait_exit(tasks, id_: str, exec_id: str = ""):  # noqa: ANN001, ANN201
    async for message in tasks.wait(WaitRequest(id=id_, exec_id=exec_id), timeout=30):
        if message.exited:
            return message.exit
    raise AssertionError("wait ended without an exit")


async def collect_attach(tasks, id_: str, exec_id: str = "") -> tuple[bytes, object]:  # noqa: ANN001
    out = b""
    async for message in tasks.attach(AttachRequest(id=id_, exec_id=exec_id, stdout=True, stderr=True), timeout=30):
        if message.eof:
            return out, message.exit
        out += message.data
    raise AssertionError("attach ended without eof")


async def expect(kind: type[Exception], awaitable) -> str:  # noqa: ANN001
    try:
        await call(awaitable)
    except kind as exc:
        return str(exc)
    raise AssertionError(f"expected {kind.__name__}")


def test_run_echo_logs_and_events(highlevel: Highlevel, bundles: Bundles, new_id: str) -> None:
    bundle = bundles.make(new_id, ["sh", "-c", "echo hello; echo oops >&2"])
    log_path = highlevel.prefix / "logs" / f"{new_id}-json.log"

    async def body() -> None:
        async with highlevel.client() as tasks:
            events: list = []
            subscribed = asyncio.Event()

            async def listen() -> None:
                stream = tasks.events(EventsRequest())
                subscribed.set()
                async for event in stream:
                    events.append(event)
                    if event.type == EventType.DELETE and event.id == new_id:
                        return

            listener = asyncio.create_task(listen())
            await asyncio.wait_for(subscribed.wait(), 5)
            await asyncio.sleep(0)  # let the Events call go out first on the shared connection
            created = await tasks.create(CreateTaskRequest(id=new_id, bundle=str(bundle), runtime=highlevel.runtime,
                                                           log=LogConfig(path=str(log_path))))
            assert created.pid > 0
            state = await tasks.state(StateRequest(id=new_id))
            assert state.status == TaskStatus.CREATED and state.pid == created.pid
            waiter = asyncio.create_task(wait_exit(tasks, new_id))
            await tasks.start(StartRequest(id=new_id))
            exit_ = await waiter
            assert exit_.exit_code == 0 and exit_.exited_at.endswith("Z")
            state = await tasks.state(StateRequest(id=new_id))
            assert state.status == TaskStatus.STOPPED and state.exit.exit_code == 0
            deleted = await tasks.delete(DeleteTaskRequest(id=new_id))
            assert deleted.pid == created.pid
            await asyncio.wait_for(listener, 10)

        order = [(e.type, e.id) for e in events if e.id == new_id]
        assert order == [(EventType.CREATE, new_id), (EventType.START, new_id), (EventType.EXIT, new_id),
                         (EventType.DELETE, new_id)]
        seqs = [e.seq for e in events]
        assert seqs == sorted(seqs)
        assert [e.timestamp for e in events] == sorted(e.timestamp for e in events)

    run(body())
    entries = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert [(e["log"], e["stream"]) for e in entries] == [("hello\n", "stdout"), ("oops\n", "stderr")]
    assert all(e["time"].endswith("Z") and len(e["time"].split(".")[1]) == 10 for e in entries)
    assert highlevel.leftovers([new_id]) == []


def test_exec_attach_pty_resize(highlevel: Highlevel, bundles: Bundles, new_id: str) -> None:
    bundle = bundles.make(new_id, ["sleep", "1000"])

    async def body() -> None:
        async with highlevel.client() as tasks:
            await tasks.create(CreateTaskRequest(id=new_id, bundle=str(bundle)))
            await tasks.start(StartRequest(id=new_id))
            # A plain exec: attached before it starts, so no output is missed.
            process = {"args": ["sh", "-c", "echo from-exec; echo to-err >&2; exit 5"], "cwd": "/",
                       "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0}}
            await tasks.exec(ExecRequest(id=new_id, exec_id="e1", process=json.dumps(process).encode()))
            attached = asyncio.create_task(collect_attach(tasks, new_id, "e1"))
            started = await tasks.start(StartRequest(id=new_id, exec_id="e1"))
            assert started.pid > 0
            out, exit_ = await attached
            assert b"from-exec\n" in out and b"to-err\n" in out and exit_.exit_code == 5
            assert (await wait_exit(tasks, new_id, "e1")).exit_code == 5
            await tasks.delete(DeleteTaskRequest(id=new_id, exec_id="e1"))

            # A terminal exec: an interactive shell, resized, asked its size.
            shell = {"args": ["sh"], "cwd": "/", "env": ["PATH=/bin", "TERM=xterm"], "user": {"uid": 0, "gid": 0}}
            await tasks.exec(ExecRequest(id=new_id, exec_id="tty", process=json.dumps(shell).encode(),
                                         terminal=True, stdin=True))
            attached = asyncio.create_task(collect_attach(tasks, new_id, "tty"))
            await tasks.start(StartRequest(id=new_id, exec_id="tty"))
            await tasks.resize_pty(ResizePtyRequest(id=new_id, exec_id="tty", width=123, height=45))
            await tasks.write_stdin([StdinChunk(id=new_id, exec_id="tty", data=b"stty size; exit 3\n")])
            out, exit_ = await attached
            assert b"45 123" in out, out
            assert exit_.exit_code == 3

            await tasks.kill(KillRequest(id=new_id, signal=signal.SIGKILL))
            assert (await wait_exit(tasks, new_id)).exit_code == 137
            await tasks.delete(DeleteTaskRequest(id=new_id))

    run(body())
    assert highlevel.leftovers([new_id]) == []


def test_kill_pause_resume_stats_pids(highlevel: Highlevel, bundles: Bundles, new_id: str) -> None:
    bundle = bundles.make(new_id, ["sleep", "1000"])

    async def body() -> None:
        async with highlevel.client() as tasks:
            created = await tasks.create(CreateTaskRequest(id=new_id, bundle=str(bundle)))
            await tasks.start(StartRequest(id=new_id))
            assert (await tasks.state(StateRequest(id=new_id))).status == TaskStatus.RUNNING
            pids = await tasks.list_pids(TaskRequest(id=new_id))
            assert created.pid in pids.pids
            stats = await tasks.stats(TaskRequest(id=new_id))
            assert stats.memory_usage > 0 and stats.pids_current >= 1 and json.loads(stats.raw)
            # ListPids, Stats and Update all go through the shim's ops (highlevel runs no runtime).
            await tasks.update(UpdateRequest(id=new_id, resources=json.dumps({"pids": {"limit": 64}}).encode()))
            assert json.loads((await tasks.stats(TaskRequest(id=new_id))).raw)["pids"]["limit"] == 64
            await expect(InvalidArgument, tasks.update(UpdateRequest(id=new_id, resources=b"[1]")))
            await tasks.pause(TaskRequest(id=new_id))
            assert (await tasks.state(StateRequest(id=new_id))).status == TaskStatus.PAUSED
            await expect(FailedPrecondition, tasks.pause(TaskRequest(id=new_id)))
            await tasks.resume(TaskRequest(id=new_id))
            assert (await tasks.state(StateRequest(id=new_id))).status == TaskStatus.RUNNING
            # SIGKILL: a container's pid 1 ignores SIGTERM unless it handles it.
            await tasks.kill(KillRequest(id=new_id, signal=signal.SIGKILL, all=True))
            exit_ = await wait_exit(tasks, new_id)
            assert exit_.exit_code == 128 + signal.SIGKILL and exit_.signal == signal.SIGKILL
            assert not pid_alive(created.pid)
            await tasks.delete(DeleteTaskRequest(id=new_id))
            try:
                await call(tasks.state(StateRequest(id=new_id)))
                raise AssertionError("state of a deleted task")
            except NotFound:
                pass

    run(body())
    assert highlevel.leftovers([new_id]) == []


def test_bad_input_is_typed_and_leaves_nothing(highlevel: Highlevel, bundles: Bundles, new_id: str) -> None:
    good = bundles.make(new_id, ["sleep", "1000"])
    bad = bundles.make("bad", ["/no/such/binary"])
    broken = bundles.folder / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")

    async def body() -> None:
        async with highlevel.client() as tasks:
            await expect(NotFound, tasks.state(StateRequest(id="nope")))
            await expect(NotFound, tasks.start(StartRequest(id="nope")))
            await expect(NotFound, tasks.delete(DeleteTaskRequest(id="nope")))
            await expect(NotFound, tasks.kill(KillRequest(id="nope", signal=9)))
            await expect(InvalidArgument, tasks.create(CreateTaskRequest(id="../x", bundle=str(good))))
            await expect(InvalidArgument, tasks.create(CreateTaskRequest(id="x1", bundle="/no/such/bundle")))
            message = await expect(InvalidArgument, tasks.create(CreateTaskRequest(id="bad1", bundle=str(bad))))
            assert "binary" in message or "no such file" in message.lower(), message
            await expect(InvalidArgument, tasks.create(CreateTaskRequest(id="brk1", bundle=str(broken))))
            await tasks.create(CreateTaskRequest(id=new_id, bundle=str(good)))
            from services.common.errors import AlreadyExists

            await expect(AlreadyExists, tasks.create(CreateTaskRequest(id=new_id, bundle=str(good))))
            await tasks.start(StartRequest(id=new_id))
            await expect(FailedPrecondition, tasks.start(StartRequest(id=new_id)))
            await expect(FailedPrecondition, tasks.delete(DeleteTaskRequest(id=new_id)))
            await expect(NotFound, tasks.start(StartRequest(id=new_id, exec_id="nope")))
            await tasks.delete(DeleteTaskRequest(id=new_id, force=True))

    run(body())
    assert highlevel.leftovers([new_id, "bad1", "brk1", "x1"]) == []
