"""The daemon's gRPC services: translation between proto messages and the ContainerManager."""

from __future__ import annotations

from collections.abc import AsyncIterator

import structlog
from grpclib.client import Channel
from grpclib.server import Server

from services.common.config import Config
from services.common.errors import FailedPrecondition, Unavailable
from services.common.grpc import call, grpc_errors
from services.common.service import Serving, grpc_probe, listen_unix, run_service
from services.daemon.containers import ContainerManager
from services.daemon.images import ImagesService
from services.daemon.summaries import summaries_json
from services.gen.skiff import highlevel
from services.gen.skiff.daemon.v1 import (
    AttachRequest,
    Container,
    ContainerRef,
    ContainersBase,
    CreateContainerRequest,
    CreateContainerResponse,
    Empty,
    InfoResponse,
    KillRequest,
    ListRequest,
    ListResponse,
    ListSummariesResponse,
    LogEntry,
    LogsRequest,
    RemoveRequest,
    State,
    StopRequest,
    SystemBase,
    WaitRequest,
    WaitResponse,
)

hl = highlevel.v1
log = structlog.get_logger(service="daemon")


class ContainersService(ContainersBase):
    def __init__(self, manager: ContainerManager) -> None:
        self.manager = manager

    @grpc_errors
    async def create(self, create_container_request: CreateContainerRequest) -> CreateContainerResponse:
        record = await self.manager.create(create_container_request.name, create_container_request.config)
        return CreateContainerResponse(id=record.id)

    @grpc_errors
    async def start(self, container_ref: ContainerRef) -> Empty:
        await self.manager.start(container_ref.id)  # FailedPrecondition when running: the API's 304
        return Empty()

    @grpc_errors
    async def stop(self, stop_request: StopRequest) -> Empty:
        r = stop_request
        entry = self.manager.get(r.id)
        if not entry.running:
            entry.record.stopped_by_user = True  # a restart policy's pending restart is called off
            raise FailedPrecondition(f"container {entry.record.id} is already stopped")  # the API's 304
        await self.manager.stop(r.id, r.timeout if r.timeout_set else None, r.signal)
        self.manager.emit("stop", entry)
        return Empty()

    @grpc_errors
    async def kill(self, kill_request: KillRequest) -> Empty:
        await self.manager.kill(kill_request.id, kill_request.signal)
        return Empty()

    @grpc_errors
    async def remove(self, remove_request: RemoveRequest) -> Empty:
        await self.manager.remove(remove_request.id, remove_request.force, remove_request.volumes)
        return Empty()

    @grpc_errors
    async def wait(self, wait_request: WaitRequest) -> AsyncIterator[WaitResponse]:
        async for exited, code in self.manager.wait(wait_request.id, wait_request.condition):
            yield WaitResponse(exited=exited, exit_code=code)

    @grpc_errors
    async def list(self, list_request: ListRequest) -> ListResponse:
        r = list_request
        return ListResponse(containers=self.manager.list(r.all, r.filters, r.limit))

    @grpc_errors
    async def list_summaries(self, list_request: ListRequest) -> ListSummariesResponse:
        r = list_request
        return ListSummariesResponse(json=summaries_json(self.manager.list(r.all, r.filters, r.limit)))

    @grpc_errors
    async def inspect(self, container_ref: ContainerRef) -> Container:
        return self.manager.get(container_ref.id).record

    @grpc_errors
    async def logs(self, logs_request: LogsRequest) -> AsyncIterator[LogEntry]:
        r = logs_request
        async for entry in self.manager.logs(r.id, follow=r.follow, stdout=r.stdout, stderr=r.stderr, tail=r.tail):
            yield entry

    @grpc_errors
    async def attach(self, attach_request: AttachRequest) -> AsyncIterator[LogEntry]:
        r = attach_request
        async for entry in self.manager.attach_output(r.id, r.stdout, r.stderr):
            yield entry


class SystemService(SystemBase):
    def __init__(self, manager: ContainerManager, config: Config) -> None:
        self.manager = manager
        self.config = config

    @grpc_errors
    async def info(self, empty: Empty) -> InfoResponse:
        states = [e.record.state.status for e in self.manager.entries.values()]
        try:
            images = len((await call(self.manager.images.list(hl.ListImagesRequest()))).images)
        except Unavailable:
            images = 0
        return InfoResponse(
            containers=len(states), running=states.count(State.RUNNING), paused=states.count(State.PAUSED),
            stopped=len(states) - states.count(State.RUNNING) - states.count(State.PAUSED), images=images,
            runtime=self.config.runtime, root=str(self.config.paths.lib))


async def serve(config: Config) -> int:
    """Runs the daemon until SIGTERM/SIGINT (services.common.service); its exit code."""
    return await run_service("daemon", lambda: start(config))


async def start(config: Config) -> Serving:
    paths = config.paths
    for folder in (paths.run, paths.daemon_lib, paths.run / "daemon"):
        folder.mkdir(parents=True, exist_ok=True)
    channel = Channel(path=str(paths.highlevel_socket))
    manager = ContainerManager(paths, channel, config.runtime)
    from services.daemon.storage import storage_services

    storage = storage_services(manager)  # area D: volumes, mounts, archive
    from services.daemon.exec_service import depth_services

    depth = depth_services(manager)  # area A: exec, stdin, restart policies, events, top/stats/...
    await manager.load()
    from services.daemon.networks_service import NetworksService

    server = Server([ContainersService(manager), ImagesService(manager), SystemService(manager, config),
                     NetworksService(manager.net), *storage, *depth])
    listener = listen_unix(paths.daemon_socket)
    await server.start(sock=listener.sock)
    log.info("started", highlevel=str(paths.highlevel_socket))

    async def stop() -> None:
        # Stopping the daemon never stops a container: records stay, and the next start reconciles.
        server.close()
        await server.wait_closed()
        await manager.close()
        channel.close()

    def status() -> str:
        running = sum(e.record.state.status == State.RUNNING for e in manager.entries.values())
        return f"{running} containers running"

    return Serving(listener, grpc_probe, stop, status=status)
