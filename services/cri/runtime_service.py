"""``runtime.v1.RuntimeService``: translation between the CRI messages and skiff-cri's managers.

Exec, Attach and PortForward answer with a URL of the streaming server (services/cri/streaming),
which calls back into execs.py; the optional RPCs of this API version that kubelet does not need
(checkpoint, container events, pod metrics) answer UNIMPLEMENTED, as containerd 1.6 does.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any, Protocol

from grpclib.const import Status
from grpclib.exceptions import GRPCError

from services.common.errors import NotFound
from services.common.grpc import grpc_errors
from services.cri.containers import ContainerManager
from services.cri.execs import Execs
from services.cri.sandboxes import SandboxManager
from services.cri.settings import CRI_VERSION, RUNTIME_API_VERSION, RUNTIME_NAME
from services.cri.state import CriState
from services.cri.stats import Stats
from services.cri.store import ContainerRecord, SandboxRecord
from services.gen.runtime import v1 as cri

CONTAINER_STATES = {"created": cri.ContainerState.CONTAINER_CREATED, "running": cri.ContainerState.CONTAINER_RUNNING,
                    "exited": cri.ContainerState.CONTAINER_EXITED}


class StreamingUrls(Protocol):
    """The streaming server's side that makes URLs (services/cri/streaming/server.py)."""

    def get_exec_url(self, container_id: str, cmd: list[str], tty: bool, stdin: bool, stdout: bool,
                     stderr: bool) -> str: ...
    def get_attach_url(self, container_id: str, tty: bool, stdin: bool, stdout: bool, stderr: bool) -> str: ...
    def get_port_forward_url(self, pod_id: str, ports: list[int]) -> str: ...


def _labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("skiff")
    except PackageNotFoundError:
        return "0.0.0"


class CriRuntimeService(cri.RuntimeServiceBase):
    def __init__(self, state: CriState, sandboxes: SandboxManager, containers: ContainerManager, execs: Execs,
                 stats: Stats, streaming: StreamingUrls | None = None) -> None:
        self.state = state
        self.sandboxes = sandboxes
        self.containers = containers
        self.execs = execs
        self.stats = stats
        self.streaming = streaming

    # ---- runtime ----------------------------------------------------------------------------

    @grpc_errors
    async def version(self, version_request: cri.VersionRequest) -> cri.VersionResponse:
        return cri.VersionResponse(version=CRI_VERSION, runtime_name=RUNTIME_NAME, runtime_version=_version(),
                                   runtime_api_version=RUNTIME_API_VERSION)

    @grpc_errors
    async def status(self, status_request: cri.StatusRequest) -> cri.StatusResponse:
        ready, why = await asyncio.to_thread(self.sandboxes.network_ready)
        conditions = [
            cri.RuntimeCondition(type="RuntimeReady", status=True),
            cri.RuntimeCondition(type="NetworkReady", status=ready, reason="" if ready else "NetworkPluginNotReady",
                                 message="" if ready else f"Network plugin returns error: {why}"),
        ]
        info = {"config": json.dumps({"cgroupDriver": "cgroupfs", "sandboxImage": "", "pause": "skiff-cri's own",
                                      "cniConfDir": str(self.state.settings.cni_conf_dir)})} \
            if status_request.verbose else {}
        return cri.StatusResponse(status=cri.RuntimeStatus(conditions=conditions), info=info)

    @grpc_errors
    async def update_runtime_config(self, update_runtime_config_request: cri.UpdateRuntimeConfigRequest
                                    ) -> cri.UpdateRuntimeConfigResponse:
        return cri.UpdateRuntimeConfigResponse()  # the pod CIDR is the CNI config's business

    # ---- pods -------------------------------------------------------------------------------

    @grpc_errors
    async def run_pod_sandbox(self, run_pod_sandbox_request: cri.RunPodSandboxRequest) -> cri.RunPodSandboxResponse:
        r = run_pod_sandbox_request
        return cri.RunPodSandboxResponse(pod_sandbox_id=await self.sandboxes.run(r.config, r.runtime_handler))

    @grpc_errors
    async def stop_pod_sandbox(self, stop_pod_sandbox_request: cri.StopPodSandboxRequest
                               ) -> cri.StopPodSandboxResponse:
        await self.sandboxes.stop(stop_pod_sandbox_request.pod_sandbox_id)
        return cri.StopPodSandboxResponse()

    @grpc_errors
    async def remove_pod_sandbox(self, remove_pod_sandbox_request: cri.RemovePodSandboxRequest
                                 ) -> cri.RemovePodSandboxResponse:
        await self.sandboxes.remove(remove_pod_sandbox_request.pod_sandbox_id)
        return cri.RemovePodSandboxResponse()

    def _pod_status(self, s: SandboxRecord) -> cri.PodSandboxStatus:
        config = s.config
        opts = config.linux.security_context.namespace_options
        return cri.PodSandboxStatus(
            id=s.id, metadata=config.metadata,
            state=cri.PodSandboxState.SANDBOX_READY if s.ready else cri.PodSandboxState.SANDBOX_NOTREADY,
            created_at=s.created_at,
            network=cri.PodSandboxNetworkStatus(ip=s.ip, additional_ips=[cri.PodIp(ip=i) for i in s.additional_ips]),
            linux=cri.LinuxPodSandboxStatus(namespaces=cri.Namespace(options=opts)),
            labels=dict(config.labels), annotations=dict(config.annotations), runtime_handler="")

    @grpc_errors
    async def pod_sandbox_status(self, pod_sandbox_status_request: cri.PodSandboxStatusRequest
                                 ) -> cri.PodSandboxStatusResponse:
        s = self.state.sandbox(pod_sandbox_status_request.pod_sandbox_id)
        info = {"info": json.dumps({"netns": s.netns, "cgroupParent": s.cgroup_parent, "pid": s.pause_pid})} \
            if pod_sandbox_status_request.verbose else {}
        return cri.PodSandboxStatusResponse(status=self._pod_status(s), info=info)

    @grpc_errors
    async def list_pod_sandbox(self, list_pod_sandbox_request: cri.ListPodSandboxRequest
                               ) -> cri.ListPodSandboxResponse:
        f = list_pod_sandbox_request.filter
        items = []
        for s in list(self.state.sandboxes.values()):
            status = self._pod_status(s)
            if f is not None:
                if f.id and not s.id.startswith(f.id):
                    continue
                if _sent(f, "state") and status.state != f.state.state:
                    continue
                if not _labels_match(dict(f.label_selector), status.labels):
                    continue
            items.append(cri.PodSandbox(id=s.id, metadata=status.metadata, state=status.state,
                                        created_at=s.created_at, labels=status.labels,
                                        annotations=status.annotations))
        return cri.ListPodSandboxResponse(items=items)

    # ---- containers -------------------------------------------------------------------------

    @grpc_errors
    async def create_container(self, create_container_request: cri.CreateContainerRequest
                               ) -> cri.CreateContainerResponse:
        r = create_container_request
        return cri.CreateContainerResponse(container_id=await self.containers.create(r.pod_sandbox_id, r.config))

    @grpc_errors
    async def start_container(self, start_container_request: cri.StartContainerRequest
                              ) -> cri.StartContainerResponse:
        await self.containers.start(start_container_request.container_id)
        return cri.StartContainerResponse()

    @grpc_errors
    async def stop_container(self, stop_container_request: cri.StopContainerRequest) -> cri.StopContainerResponse:
        await self.containers.stop(stop_container_request.container_id, stop_container_request.timeout)
        return cri.StopContainerResponse()

    @grpc_errors
    async def remove_container(self, remove_container_request: cri.RemoveContainerRequest
                               ) -> cri.RemoveContainerResponse:
        await self.containers.remove(remove_container_request.container_id)
        return cri.RemoveContainerResponse()

    def _container_status(self, c: ContainerRecord) -> cri.ContainerStatus:
        config = c.config
        return cri.ContainerStatus(
            id=c.id, metadata=config.metadata, state=CONTAINER_STATES[c.state], created_at=c.created_at,
            started_at=c.started_at, finished_at=c.finished_at, exit_code=c.exit_code,
            image=cri.ImageSpec(image=c.image_ref), image_ref=c.image_id, reason=c.reason, message=c.message,
            labels=dict(config.labels), annotations=dict(config.annotations), mounts=list(config.mounts),
            log_path=c.log_path,
            resources=cri.ContainerResources(linux=config.linux.resources) if config.linux else None)

    @grpc_errors
    async def container_status(self, container_status_request: cri.ContainerStatusRequest
                               ) -> cri.ContainerStatusResponse:
        c = self.state.container(container_status_request.container_id)
        info = {"info": json.dumps({"pid": c.pid, "sandboxID": c.sandbox_id})} \
            if container_status_request.verbose else {}
        return cri.ContainerStatusResponse(status=self._container_status(c), info=info)

    @grpc_errors
    async def list_containers(self, list_containers_request: cri.ListContainersRequest) -> cri.ListContainersResponse:
        f = list_containers_request.filter
        out = []
        for c in list(self.state.containers.values()):
            config = c.config
            state = CONTAINER_STATES[c.state]
            if f is not None:
                if f.id and not c.id.startswith(f.id):
                    continue
                if f.pod_sandbox_id and not c.sandbox_id.startswith(f.pod_sandbox_id):
                    continue
                if _sent(f, "state") and state != f.state.state:
                    continue
                if not _labels_match(dict(f.label_selector), dict(config.labels)):
                    continue
            out.append(cri.Container(id=c.id, pod_sandbox_id=c.sandbox_id, metadata=config.metadata,
                                     image=cri.ImageSpec(image=c.image_ref), image_ref=c.image_id, state=state,
                                     created_at=c.created_at, labels=dict(config.labels),
                                     annotations=dict(config.annotations)))
        return cri.ListContainersResponse(containers=out)

    @grpc_errors
    async def update_container_resources(self, update_container_resources_request: cri.UpdateContainerResourcesRequest
                                         ) -> cri.UpdateContainerResourcesResponse:
        r = update_container_resources_request
        await self.containers.update_resources(r.container_id, r.linux)
        return cri.UpdateContainerResourcesResponse()

    @grpc_errors
    async def reopen_container_log(self, reopen_container_log_request: cri.ReopenContainerLogRequest
                                   ) -> cri.ReopenContainerLogResponse:
        await self.containers.reopen_log(reopen_container_log_request.container_id)
        return cri.ReopenContainerLogResponse()

    @grpc_errors
    async def exec_sync(self, exec_sync_request: cri.ExecSyncRequest) -> cri.ExecSyncResponse:
        r = exec_sync_request
        out, err, code = await self.execs.exec_sync(r.container_id, list(r.cmd), r.timeout)
        return cri.ExecSyncResponse(stdout=out, stderr=err, exit_code=code)

    # ---- streaming --------------------------------------------------------------------------

    def _urls(self) -> StreamingUrls:
        if self.streaming is None:
            raise GRPCError(Status.UNIMPLEMENTED, "the streaming server is not running")
        return self.streaming

    @grpc_errors
    async def exec(self, exec_request: cri.ExecRequest) -> cri.ExecResponse:
        c = self.state.container(exec_request.container_id)
        if c.state != "running":
            raise NotFound(f"container {c.id} is not running")
        r = exec_request
        return cri.ExecResponse(url=self._urls().get_exec_url(c.id, list(r.cmd), r.tty, r.stdin, r.stdout, r.stderr))

    @grpc_errors
    async def attach(self, attach_request: cri.AttachRequest) -> cri.AttachResponse:
        c = self.state.container(attach_request.container_id)
        if c.state != "running":
            raise NotFound(f"container {c.id} is not running")
        r = attach_request
        return cri.AttachResponse(url=self._urls().get_attach_url(c.id, r.tty, r.stdin, r.stdout, r.stderr))

    @grpc_errors
    async def port_forward(self, port_forward_request: cri.PortForwardRequest) -> cri.PortForwardResponse:
        s = self.state.sandbox(port_forward_request.pod_sandbox_id)
        return cri.PortForwardResponse(url=self._urls().get_port_forward_url(s.id, list(port_forward_request.port)))

    # ---- stats ------------------------------------------------------------------------------

    @grpc_errors
    async def container_stats(self, container_stats_request: cri.ContainerStatsRequest) -> cri.ContainerStatsResponse:
        c = self.state.container(container_stats_request.container_id)
        return cri.ContainerStatsResponse(stats=await self.stats.container(c))

    @grpc_errors
    async def list_container_stats(self, list_container_stats_request: cri.ListContainerStatsRequest
                                   ) -> cri.ListContainerStatsResponse:
        f = list_container_stats_request.filter
        chosen = [c for c in list(self.state.containers.values())
                  if c.state == "running"
                  and (f is None or ((not f.id or c.id.startswith(f.id))
                                     and (not f.pod_sandbox_id or c.sandbox_id.startswith(f.pod_sandbox_id))
                                     and _labels_match(dict(f.label_selector), dict(c.config.labels))))]
        return cri.ListContainerStatsResponse(stats=list(await asyncio.gather(*(self.stats.container(c)
                                                                                for c in chosen))))

    @grpc_errors
    async def pod_sandbox_stats(self, pod_sandbox_stats_request: cri.PodSandboxStatsRequest
                                ) -> cri.PodSandboxStatsResponse:
        s = self.state.sandbox(pod_sandbox_stats_request.pod_sandbox_id)
        return cri.PodSandboxStatsResponse(stats=await self.stats.pod(s))

    @grpc_errors
    async def list_pod_sandbox_stats(self, list_pod_sandbox_stats_request: cri.ListPodSandboxStatsRequest
                                     ) -> cri.ListPodSandboxStatsResponse:
        f = list_pod_sandbox_stats_request.filter
        chosen = [s for s in list(self.state.sandboxes.values())
                  if f is None or ((not f.id or s.id.startswith(f.id))
                                   and _labels_match(dict(f.label_selector), dict(s.config.labels)))]
        return cri.ListPodSandboxStatsResponse(stats=list(await asyncio.gather(*(self.stats.pod(s) for s in chosen))))

    # ---- not in this runtime ----------------------------------------------------------------

    async def checkpoint_container(self, checkpoint_container_request: cri.CheckpointContainerRequest) -> Any:
        raise GRPCError(Status.UNIMPLEMENTED, "checkpoint is not supported")

    async def get_container_events(self, get_events_request: cri.GetEventsRequest
                                   ) -> AsyncIterator[cri.ContainerEventResponse]:
        raise GRPCError(Status.UNIMPLEMENTED, "container events are not supported")
        yield  # an async generator, as the base's

    async def list_metric_descriptors(self, list_metric_descriptors_request: cri.ListMetricDescriptorsRequest) -> Any:
        raise GRPCError(Status.UNIMPLEMENTED, "pod metrics are not supported")

    async def list_pod_sandbox_metrics(self, list_pod_sandbox_metrics_request: cri.ListPodSandboxMetricsRequest
                                       ) -> Any:
        raise GRPCError(Status.UNIMPLEMENTED, "pod metrics are not supported")


def _sent(message: Any, field_name: str) -> bool:
    import betterproto

    return betterproto.serialized_on_wire(getattr(message, field_name))
