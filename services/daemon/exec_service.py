"""gRPC services of area A: Execs and ContainerOps (stdin, resize, restart, pause, top, stats, rename, update)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from grpclib._typing import IServable as ServiceBase

from services.common.errors import InvalidArgument
from services.common.grpc import call, grpc_errors
from services.daemon.containers import ContainerManager
from services.daemon.events import EventBus
from services.daemon.exec import ExecManager
from services.daemon.ops import Operations
from services.daemon.restart import RestartPolicies
from services.gen.skiff import highlevel
from services.gen.skiff.daemon.v1 import (
    ContainerOpsBase,
    ContainerRef,
    DockerEvent,
    Empty,
    EventsBase,
    EventsSubscribeRequest,
    ExecCreateRequest,
    ExecCreateResponse,
    ExecInfo,
    ExecOutput,
    ExecRef,
    ExecsBase,
    ExecStartRequest,
    RenameRequest,
    ResizeRequest,
    StatsSample,
    StdinData,
    StopRequest,
    TopResponse,
    UpdateContainerRequest,
    UpdateContainerResponse,
)

hl = highlevel.v1


class ExecsService(ExecsBase):
    def __init__(self, execs: ExecManager) -> None:
        self.execs = execs

    @grpc_errors
    async def create(self, exec_create_request: ExecCreateRequest) -> ExecCreateResponse:
        return ExecCreateResponse(id=await self.execs.create(exec_create_request))

    @grpc_errors
    async def start(self, exec_start_request: ExecStartRequest) -> AsyncIterator[ExecOutput]:
        async for out in self.execs.start(exec_start_request.id, exec_start_request.detach):
            yield out

    @grpc_errors
    async def inspect(self, exec_ref: ExecRef) -> ExecInfo:
        return self.execs.get(exec_ref.id).info()

    @grpc_errors
    async def resize(self, resize_request: ResizeRequest) -> Empty:
        r = resize_request
        await self.execs.resize(r.id, r.width, r.height)
        return Empty()


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
    async def top(self, container_ref: ContainerRef) -> TopResponse:
        return await self.ops.top(container_ref.id)

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


class EventsService(EventsBase):
    def __init__(self, bus: EventBus) -> None:
        self.bus = bus

    @grpc_errors
    async def subscribe(self, events_subscribe_request: EventsSubscribeRequest) -> AsyncIterator[DockerEvent]:
        r = events_subscribe_request
        async for event in self.bus.subscribe(r.since_ns, r.until_ns, dict(r.filters)):
            yield event


def depth_services(manager: ContainerManager) -> list[ServiceBase]:
    """Area A wired to the container manager; called before manager.load so exits at load are seen."""
    bus = EventBus()
    execs = ExecManager(manager)
    policies = RestartPolicies(manager)
    manager.sinks += [bus.container_event, policies.on_event]
    execs.sinks.append(bus.container_event)
    manager.restore_hooks.append(execs.restore)
    manager.sinks.append(lambda action, entry, _: execs.forget_container(entry.record.id)
                         if action == "destroy" else None)
    return [ExecsService(execs), ContainerOpsService(Operations(manager)), EventsService(bus)]
