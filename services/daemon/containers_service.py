"""The daemon's Containers and System gRPC services: translation between proto messages and the
container lifecycle (containers.ContainerManager) and table (records.ContainerRecords)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from services.common.config import Config
from services.common.daemon_config import apply_log_defaults, apply_runtime_default, apply_ulimit_defaults
from services.common.errors import FailedPrecondition, Unavailable
from services.common.grpc import call, finish_even_if_caller_goes, grpc_errors
from services.daemon import container_output
from services.daemon.containers import ContainerManager
from services.daemon.hostopts import prepare
from services.daemon.links import link_names
from services.daemon.summaries import Summaries
from services.dockermodel.attach import check_attachable
from services.dockermodel.list_rows import Row
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
    Ulimit,
    WaitRequest,
    WaitResponse,
)

hl = highlevel.v1


class ContainersService(ContainersBase):
    def __init__(self, manager: ContainerManager, summaries: Summaries) -> None:
        self.manager = manager
        self.records = manager.records
        self.summaries = summaries

    @grpc_errors
    async def create(self, create_container_request: CreateContainerRequest) -> CreateContainerResponse:
        config = create_container_request.config
        apply_runtime_default(self.manager.settings.current, config.host)  # daemon.json's default-runtime, runtimes
        apply_log_defaults(self.manager.settings.current, config.host)  # and log-driver, log-opts
        apply_ulimit_defaults(self.manager.settings.current, config.host, Ulimit)  # and default-ulimits
        warnings = await prepare(self.records, config)  # dockerd's checks and defaults of HostConfig's options
        # Finished even if the apiserver dies meanwhile: cut, its snapshot's prepare could land after
        # the cleanup (a mount no record owns).
        record = await finish_even_if_caller_goes(self.manager.create(create_container_request.name, config))
        return CreateContainerResponse(id=record.id, warnings=warnings)

    @grpc_errors
    async def start(self, container_ref: ContainerRef) -> Empty:
        # FailedPrecondition when running: the API's 304. Finished even if the apiserver dies meanwhile.
        await finish_even_if_caller_goes(self.manager.start(container_ref.id))
        return Empty()

    @grpc_errors
    async def stop(self, stop_request: StopRequest) -> Empty:
        r = stop_request
        entry = self.records.get(r.id)
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
        return ListResponse(containers=self.records.list(r.all, r.filters, r.limit))

    @grpc_errors
    async def list_summaries(self, list_request: ListRequest) -> ListSummariesResponse:
        return ListSummariesResponse(json=self.render_list(list_request))

    def render_list(self, r: ListRequest) -> bytes:
        """GET /containers/json's body."""
        return self.summaries.render(self.records.list(r.all, r.filters, r.limit), link_names(self.records),
                                     self.records.versions)

    def list_rows(self, r: ListRequest) -> list[Row]:
        """The same as rows (dockermodel/list_rows.py), which the list lane (daemon/list_lane.py) sends."""
        return self.summaries.rows(self.records.list(r.all, r.filters, r.limit), link_names(self.records),
                                   self.records.versions)

    @grpc_errors
    async def inspect(self, container_ref: ContainerRef) -> Container:
        return self.records.get(container_ref.id).record

    @grpc_errors
    async def logs(self, logs_request: LogsRequest) -> AsyncIterator[LogEntry]:
        r = logs_request
        async for entry in container_output.logs(self.manager.get(r.id), follow=r.follow, stdout=r.stdout,
                                                  stderr=r.stderr, tail=r.tail):
            yield entry

    @grpc_errors
    async def attach(self, attach_request: AttachRequest) -> AsyncIterator[LogEntry]:
        r = attach_request
        found = self.manager.get(r.id)
        check_attachable(r.id, found.record.state.status)
        async for entry in container_output.attach_output(found, r.stdout, r.stderr):
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
