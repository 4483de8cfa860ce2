"""The Tasks gRPC service: translation between the proto messages and the TaskManager."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

from services.common.errors import InvalidArgument
from services.common.grpc import finish_even_if_caller_goes, grpc_errors
from services.common.shimproto import FrameKind, Op
from services.gen.skiff.highlevel.v1 import (
    AttachOutput,
    AttachRequest,
    CloseIoRequest,
    CreateTaskRequest,
    CreateTaskResponse,
    DeleteTaskRequest,
    DeleteTaskResponse,
    Empty,
    Event,
    EventsRequest,
    ExecRequest,
    KillRequest,
    ListPidsResponse,
    ListTasksRequest,
    ListTasksResponse,
    ResizePtyRequest,
    StartRequest,
    StartResponse,
    StateRequest,
    StatsResponse,
    StdinChunk,
    Stream,
    TaskRequest,
    TasksBase,
    TaskState,
    UpdateRequest,
    WaitRequest,
    WaitResponse,
)
from services.gen.skiff.highlevel.v1 import TaskStatus as ProtoStatus
from services.highlevel.bundles import check_id, remove_bundle, write_bundle
from services.highlevel.events import EventBus
from services.highlevel.shim_client import ShimGone
from services.highlevel.tasks import DEFAULT_NAMESPACE, CreateOptions, ExitInfo, TaskManager, TaskStatus

STATUS_TO_PROTO = {
    TaskStatus.CREATED: ProtoStatus.CREATED,
    TaskStatus.RUNNING: ProtoStatus.RUNNING,
    TaskStatus.PAUSED: ProtoStatus.PAUSED,
    TaskStatus.STOPPED: ProtoStatus.STOPPED,
}


def _int(raw: object) -> int:
    return int(raw) if isinstance(raw, int | float) else 0


class TasksService(TasksBase):
    def __init__(self, manager: TaskManager, events: EventBus) -> None:
        self.manager = manager
        self.bus = events

    @grpc_errors
    async def create(self, create_task_request: CreateTaskRequest) -> CreateTaskResponse:
        # Finished even if the daemon dies meanwhile: its shim is then a task highlevel knows (the
        # daemon's reconcile deletes it), never an orphan forked and forgotten.
        return await finish_even_if_caller_goes(self._create(create_task_request))

    async def _create(self, create_task_request: CreateTaskRequest) -> CreateTaskResponse:
        r = create_task_request
        if r.spec and r.bundle:
            raise InvalidArgument("a spec or a bundle, not both")
        folder = self.manager.task_dirs / r.id
        if r.spec:
            # As containerd's task create: the bundle is written here, in the task's own folder.
            check_id(r.id)
            bundle = str(await asyncio.to_thread(write_bundle, folder, r.spec))
        else:
            bundle = r.bundle
        opts = CreateOptions(id=r.id, bundle=bundle, runtime=r.runtime, terminal=r.terminal, stdin=r.stdin,
                             stdin_once=r.stdin_once, log_path=r.log.path if r.log else "",
                             log_max_size=r.log.max_size if r.log else 0, log_max_file=r.log.max_file if r.log else 1,
                             log_format=r.log.format if r.log else "", log_compress=bool(r.log and r.log.compress),
                             log_attrs=dict(r.log.attrs) if r.log else None,
                             namespace=r.namespace or DEFAULT_NAMESPACE, start=r.start,
                             release_on_exit=r.release_on_exit)
        try:
            task = await self.manager.create(opts)
        except BaseException:
            if r.spec:
                await asyncio.to_thread(remove_bundle, folder)
            raise
        return CreateTaskResponse(pid=task.init.pid)

    @grpc_errors
    async def start(self, start_request: StartRequest) -> StartResponse:
        return StartResponse(pid=await self.manager.start(start_request.id, start_request.exec_id))

    @grpc_errors
    async def kill(self, kill_request: KillRequest) -> Empty:
        r = kill_request
        await self.manager.kill(r.id, r.exec_id, r.signal, r.all)
        return Empty()

    @grpc_errors
    async def delete(self, delete_task_request: DeleteTaskRequest) -> DeleteTaskResponse:
        r = delete_task_request
        pid, exit_ = await self.manager.delete(r.id, r.exec_id, r.force)
        return DeleteTaskResponse(pid=pid, exit=exit_.to_proto() if exit_ else None)

    @grpc_errors
    async def wait(self, wait_request: WaitRequest) -> AsyncIterator[WaitResponse]:
        # Resolving the task first makes an unknown id fail before the "registered" message.
        self.manager.get(wait_request.id).proc(wait_request.exec_id)
        yield WaitResponse(exited=False)
        info = await self.manager.wait(wait_request.id, wait_request.exec_id)
        yield WaitResponse(exited=True, exit=info.to_proto())

    @grpc_errors
    async def exec(self, exec_request: ExecRequest) -> Empty:
        r = exec_request
        await self.manager.exec(r.id, r.exec_id, r.process, r.terminal, r.stdin, r.stdin_once)
        return Empty()

    @grpc_errors
    async def resize_pty(self, resize_pty_request: ResizePtyRequest) -> Empty:
        r = resize_pty_request
        await self.manager.shim_call(r.id, Op.RESIZE, exec_id=r.exec_id, width=r.width, height=r.height)
        return Empty()

    @grpc_errors
    async def close_io(self, close_io_request: CloseIoRequest) -> Empty:
        await self.manager.shim_call(close_io_request.id, Op.CLOSE_STDIN, exec_id=close_io_request.exec_id)
        return Empty()

    @grpc_errors
    async def pause(self, task_request: TaskRequest) -> Empty:
        await self.manager.pause(task_request.id, True)
        return Empty()

    @grpc_errors
    async def resume(self, task_request: TaskRequest) -> Empty:
        await self.manager.pause(task_request.id, False)
        return Empty()

    @grpc_errors
    async def update(self, update_request: UpdateRequest) -> Empty:
        await self.manager.update(update_request.id, update_request.resources)
        return Empty()

    @grpc_errors
    async def list_pids(self, task_request: TaskRequest) -> ListPidsResponse:
        return ListPidsResponse(pids=await self.manager.list_pids(task_request.id))

    @grpc_errors
    async def stats(self, task_request: TaskRequest) -> StatsResponse:
        data = await self.manager.stats(task_request.id)
        cpu = data.get("cpu", {}).get("usage", {})
        memory = data.get("memory", {}).get("usage", {})
        return StatsResponse(raw=json.dumps(data).encode(), cpu_usage_ns=_int(cpu.get("total")),
                             memory_usage=_int(memory.get("usage")), memory_limit=_int(memory.get("limit")),
                             pids_current=_int(data.get("pids", {}).get("current")))

    @grpc_errors
    async def state(self, state_request: StateRequest) -> TaskState:
        return self._state(await self.manager.state(state_request.id, state_request.exec_id))

    def _state(self, raw: dict) -> TaskState:
        task = self.manager.tasks.get(raw["id"])
        exit_: ExitInfo | None = raw.get("exit")
        return TaskState(id=raw["id"], exec_id=raw["exec_id"], pid=raw["pid"], status=STATUS_TO_PROTO[raw["status"]],
                         terminal=raw["terminal"], exit=exit_.to_proto() if exit_ else None,
                         bundle=task.bundle if task else "", runtime=task.runtime if task else "",
                         started_at=raw.get("started_at", ""), shim_pid=raw.get("shim_pid", 0),
                         namespace=task.namespace if task else "")

    @grpc_errors
    async def list(self, list_tasks_request: ListTasksRequest) -> ListTasksResponse:
        r = list_tasks_request
        namespace = r.namespace or DEFAULT_NAMESPACE
        ids = [i for i, t in self.manager.tasks.items() if r.all_namespaces or t.namespace == namespace]
        states = await asyncio.gather(*(self.manager.state(i) for i in ids), return_exceptions=True)
        return ListTasksResponse(tasks=[self._state(s) for s in states if isinstance(s, dict)])

    @grpc_errors
    async def attach(self, attach_request: AttachRequest) -> AsyncIterator[AttachOutput]:
        r = attach_request
        task = self.manager.get(r.id)
        task.proc(r.exec_id)
        self.manager._alive(task)
        want_out, want_err = (r.stdout, r.stderr) if (r.stdout or r.stderr) else (True, True)
        stream = await task.client.open(Op.ATTACH, exec_id=r.exec_id, stdout=want_out, stderr=want_err)
        try:
            async for kind, payload in stream.frames():
                if kind == FrameKind.STDOUT:
                    yield AttachOutput(stream=Stream.STDOUT, data=payload)
                elif kind == FrameKind.STDERR:
                    yield AttachOutput(stream=Stream.STDERR, data=payload)
                elif kind == FrameKind.EOF:
                    info = ExitInfo.from_dict(json.loads(payload or b"{}") or {})
                    yield AttachOutput(eof=True, exit=info.to_proto())
                    return
        finally:
            stream.close()

    @grpc_errors
    async def write_stdin(self, stdin_chunk_iterator: AsyncIterator[StdinChunk]) -> Empty:
        stream = None
        close_on_end = False
        try:
            async for chunk in stdin_chunk_iterator:
                if stream is None:
                    task = self.manager.get(chunk.id)
                    task.proc(chunk.exec_id)
                    self.manager._alive(task)
                    close_on_end = chunk.close_on_end
                    stream = await task.client.open(Op.ATTACH, exec_id=chunk.exec_id, stdout=False, stderr=False,
                                                    stdin=True)
                if chunk.data:
                    await stream.send(FrameKind.STDIN, chunk.data)
                if chunk.close:
                    await stream.send(FrameKind.STDIN_CLOSE)
                    close_on_end = False
            if stream is not None and close_on_end:
                await stream.send(FrameKind.STDIN_CLOSE)
        except ConnectionError as exc:
            raise ShimGone(f"stdin: shim connection lost: {exc}") from exc
        finally:
            if stream is not None:
                with contextlib.suppress(ConnectionError):
                    await stream.writer.drain()
                stream.close()
        return Empty()

    async def events(self, events_request: EventsRequest) -> AsyncIterator[Event]:
        async for event in self.bus.subscribe():
            yield event
