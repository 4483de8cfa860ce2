"""Container operations beyond the life cycle (Docker's, served as ContainerOps): stdin, pty resize,
restart, pause, top, stats, rename, update."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from typing import Any

from services.common.errors import Conflict, FailedPrecondition, InvalidArgument, NotFound
from services.common.grpc import call, grpc_errors
from services.daemon import procps
from services.daemon.containers import ContainerManager
from services.daemon.records import NAME_RE, now_rfc3339
from services.daemon.restart import POLICIES
from services.gen.skiff import highlevel
from services.gen.skiff.daemon.v1 import (
    ContainerOpsBase,
    ContainerRef,
    Empty,
    RenameRequest,
    ResizeRequest,
    State,
    StatsSample,
    StdinData,
    StopRequest,
    TopRequest,
    TopResponse,
    TopRow,
    UpdateContainerRequest,
    UpdateContainerResponse,
)

hl = highlevel.v1
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class Operations:
    def __init__(self, containers: ContainerManager) -> None:
        self.containers = containers
        self.tasks = containers.tasks

    async def stdin(self, chunks: AsyncIterator[StdinData]) -> None:
        iterator = chunks.__aiter__()
        try:
            first = await iterator.__anext__()
        except StopAsyncIteration:
            return
        entry = self.containers.get(first.container)
        # `docker run -i` and `docker start -ai` attach before they start the container: its stdin waits for
        # the start (or the client).
        while not first.exec_id and not entry.running and not entry.removed:
            await entry.changed.wait()
        if not entry.running:
            raise Conflict(f"Container {entry.record.id} is not running")

        async def forward() -> AsyncIterator[hl.StdinChunk]:
            # highlevel knows an exec by its short id (services.daemon.exec.ExecRecord.task_exec_id).
            yield hl.StdinChunk(id=entry.record.id, exec_id=first.exec_id[:12], data=first.data, close=first.close,
                                close_on_end=first.close_on_end)
            async for chunk in iterator:
                yield hl.StdinChunk(data=chunk.data, close=chunk.close)

        await call(self.tasks.write_stdin(forward()))

    async def restart(self, ref: str, timeout: int | None, sig: str) -> None:
        entry = self.containers.get(ref)
        if entry.running:
            await self.containers.stop(entry.record.id, timeout, sig)
            self.containers.emit("stop", entry, {})
        entry.record.stopped_by_user = False
        await self.containers.start(entry.record.id)
        self.containers.emit("restart", entry, {})

    async def pause(self, ref: str, pause: bool) -> None:
        entry = self.containers.get(ref)
        async with entry.lock:
            status = entry.record.state.status
            if pause and status == State.PAUSED:
                raise Conflict(f"Container {entry.record.id} is already paused")
            if not pause and status != State.PAUSED:
                raise Conflict(f"Container {entry.record.id} is not paused")
            if status not in (State.RUNNING, State.PAUSED):
                raise Conflict(f"Container {entry.record.id} is not running")
            if pause:
                await call(self.tasks.pause(hl.TaskRequest(id=entry.record.id)))
            else:
                await call(self.tasks.resume(hl.TaskRequest(id=entry.record.id)))
            entry.record.state.status = State.PAUSED if pause else State.RUNNING
            await self.containers.save(entry.record)
            entry.notify()
        self.containers.emit("pause" if pause else "unpause", entry, {})

    async def top(self, ref: str, ps_args: str) -> TopResponse:
        entry = self.containers.get(ref)
        if not entry.running:
            raise Conflict(f"Container {entry.record.id} is not running")
        pids = (await call(self.tasks.list_pids(hl.TaskRequest(id=entry.record.id)))).pids
        titles, rows = await asyncio.to_thread(procps.table, list(pids), ps_args)
        return TopResponse(titles=titles, rows=[TopRow(cells=r) for r in rows])

    async def stats(self, ref: str) -> StatsSample:
        entry = self.containers.get(ref)
        sample = StatsSample(id=entry.record.id, name=f"/{entry.record.name}", read=now_rfc3339(),
                             online_cpus=os.cpu_count() or 1)
        sample.system_cpu_ns = await asyncio.to_thread(_system_cpu_ns)
        if not entry.running:
            return sample
        stats = await call(self.tasks.stats(hl.TaskRequest(id=entry.record.id)))
        sample.raw, sample.cpu_usage_ns = stats.raw, stats.cpu_usage_ns
        sample.memory_usage, sample.memory_limit = stats.memory_usage, stats.memory_limit
        sample.pids_current = stats.pids_current
        return sample

    async def rename(self, ref: str, name: str) -> None:
        entry = self.containers.get(ref)
        name = name.lstrip("/")
        if not name:
            raise InvalidArgument("Neither old nor new names may be empty")
        if not NAME_RE.match(name):
            raise InvalidArgument(f"Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")
        old = entry.record.name
        if name == old:
            raise InvalidArgument("Renaming a container with the same name as its current name")
        names = self.containers.records.names
        if name in names:
            raise Conflict(f'Error when allocating new name: Conflict. The container name "/{name}" is already in '
                           f'use by container "{names[name]}". You have to remove (or rename) that container to be '
                           "able to reuse that name.")
        async with entry.lock:
            if entry.removed:
                raise NotFound(f"No such container: {ref}")
            names[name] = entry.record.id
            names.pop(old, None)
            entry.record.name = name
            await self.containers.save(entry.record)
        self.containers.emit("rename", entry, {"oldName": f"/{old}"})

    async def update(self, request: UpdateContainerRequest) -> list[str]:
        entry = self.containers.get(request.id)
        host = entry.record.config.host
        if request.restart_policy and request.restart_policy not in POLICIES:
            raise InvalidArgument(f"invalid restart policy: {request.restart_policy}")
        resources: dict[str, Any] = {}
        if request.memory:
            resources["memory"] = {"limit": request.memory}
        if request.pids_limit:
            resources["pids"] = {"limit": request.pids_limit}
        cpu = {k: v for k, v in (("quota", request.cpu_quota), ("period", request.cpu_period),
                                 ("shares", request.cpu_shares)) if v}
        if cpu:
            resources["cpu"] = cpu
        async with entry.lock:
            if resources and entry.running:
                await call(self.tasks.update(hl.UpdateRequest(id=entry.record.id,
                                                              resources=json.dumps(resources).encode())))
            host.memory = request.memory or host.memory
            host.pids_limit = request.pids_limit or host.pids_limit
            if request.nano_cpus:
                # Docker keeps --cpus and an explicit quota exclusive: inspect shows the one last set.
                host.nano_cpus, host.cpu_quota, host.cpu_period = request.nano_cpus, 0, 0
            elif request.cpu_quota or request.cpu_period:
                host.nano_cpus = 0
                host.cpu_quota = request.cpu_quota or host.cpu_quota
                host.cpu_period = request.cpu_period or host.cpu_period
            host.cpu_shares = request.cpu_shares or host.cpu_shares
            if request.restart_policy:
                if host.auto_remove and request.restart_policy != "no":
                    raise FailedPrecondition("Restart policy cannot be updated because AutoRemove is enabled "
                                             "for the container")
                host.restart_policy = request.restart_policy
                host.restart_max_retries = request.restart_max_retries
            await self.containers.save(entry.record)
        self.containers.emit("update", entry, {})
        return []


def _system_cpu_ns() -> int:
    """/proc/stat's cpu line in nanoseconds: Docker's system_cpu_usage."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:8]
    return sum(int(v) for v in fields) * 1_000_000_000 // CLOCK_TICKS


class ContainerOpsService(ContainerOpsBase):
    def __init__(self, ops: Operations) -> None:
        self.ops = ops

    @grpc_errors
    async def stdin(self, stdin_data_iterator: AsyncIterator[StdinData]) -> Empty:
        await self.ops.stdin(stdin_data_iterator)
        return Empty()

    @grpc_errors
    async def resize(self, resize_request: ResizeRequest) -> Empty:
        r = resize_request
        entry = self.ops.containers.get(r.id)
        if not entry.running:
            raise InvalidArgument(f"Container {entry.record.id} is not running")
        await call(self.ops.containers.tasks.resize_pty(hl.ResizePtyRequest(id=entry.record.id, width=r.width,
                                                                            height=r.height)))
        return Empty()

    @grpc_errors
    async def restart(self, stop_request: StopRequest) -> Empty:
        r = stop_request
        await self.ops.restart(r.id, r.timeout if r.timeout_set else None, r.signal)
        return Empty()

    @grpc_errors
    async def pause(self, container_ref: ContainerRef) -> Empty:
        await self.ops.pause(container_ref.id, True)
        return Empty()

    @grpc_errors
    async def unpause(self, container_ref: ContainerRef) -> Empty:
        await self.ops.pause(container_ref.id, False)
        return Empty()

    @grpc_errors
    async def top(self, top_request: TopRequest) -> TopResponse:
        return await self.ops.top(top_request.id, top_request.ps_args)

    @grpc_errors
    async def stats(self, container_ref: ContainerRef) -> StatsSample:
        return await self.ops.stats(container_ref.id)

    @grpc_errors
    async def rename(self, rename_request: RenameRequest) -> Empty:
        await self.ops.rename(rename_request.id, rename_request.name)
        return Empty()

    @grpc_errors
    async def update(self, update_container_request: UpdateContainerRequest) -> UpdateContainerResponse:
        return UpdateContainerResponse(warnings=await self.ops.update(update_container_request))
