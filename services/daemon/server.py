"""The daemon's composition root: build_daemon makes every part and hands each its collaborators
(records, networking, mounts, the lifecycle, execs, restart policies, the event bus, the gRPC
services); serve runs them under services.common.service (socket, READY, signals, stop)."""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from grpclib._typing import IServable
from grpclib.client import Channel

from services.common import daemon_config, grpc
from services.common.config import Config
from services.common.dirspread import spread_subfolders
from services.common.list_generation import Generation, generation_path
from services.common.service import Serving, grpc_probe, listen_unix, run_service
from services.daemon.archive import ArchiveService
from services.daemon.builds.service import BuildsService
from services.daemon.container_ops import ContainerOpsService, Operations
from services.daemon.containers import ContainerManager
from services.daemon.containers_service import ContainersService, SystemService
from services.daemon.events import EventBus, EventsService
from services.daemon.exec import ExecManager, ExecsService
from services.daemon.health import HealthMonitors
from services.daemon.images import ImagesService
from services.daemon.list_lane import ListLane
from services.daemon.mounts import ContainerMounts
from services.daemon.networking import Networking
from services.daemon.networks_service import NetworksService
from services.daemon.records import ContainerRecords
from services.daemon.removal import RemovalService
from services.daemon.restart import RestartPolicies
from services.daemon.store import RecordStore
from services.daemon.summaries import Summaries
from services.daemon.volumes import VolumesService, VolumeStore
from services.gen.skiff.daemon.v1 import State

log = structlog.get_logger(service="daemon")


@dataclass(slots=True)
class Daemon:
    """The daemon's parts, built and handed their collaborators in one place (build_daemon)."""

    records: ContainerRecords
    containers: ContainerManager
    network: Networking
    execs: ExecManager
    health: HealthMonitors
    services: list[IServable]

    async def load(self) -> None:
        """Start-up, in order: networks, records, the execs (before any container exit is watched,
        so that an exit found now reaches them), each container against its task, then the network
        reconciled (proxies again for the running ones, the rest taken away)."""
        await self.network.load()
        await self.records.load()
        await self.execs.restore()
        await self.containers.reconcile()
        await self.health.restore()  # running containers' probes again, with the status they had
        await self.network.restore()
        log.info("loaded", containers=len(self.records.entries))

    async def close(self) -> None:
        # Stopping the daemon never stops a container: records stay, and the next start reconciles.
        await self.health.close()
        await self.containers.close()

    def status(self) -> str:
        running = sum(e.record.state.status == State.RUNNING for e in self.records.entries.values())
        return f"{running} containers running"


def build_daemon(config: Config, channel: Channel) -> Daemon:
    """Every part of the daemon over highlevel's ``channel``; nothing runs until Daemon.load."""
    paths = config.paths
    for folder in (paths.run, paths.daemon_lib, paths.run / "daemon"):
        folder.mkdir(parents=True, exist_ok=True)
    spread_subfolders(paths.daemon_lib / "containers")  # one folder per container (common/dirspread.py)
    records = ContainerRecords(RecordStore(paths.daemon_lib / "containers"))
    network = Networking(paths, records, config.settings)
    volume_store = VolumeStore(paths.daemon_lib / "volumes")
    volume_store.root.mkdir(parents=True, exist_ok=True)

    def volume_users(name: str) -> list[str]:
        return [cid for cid, e in records.entries.items()
                if any(p.type == "volume" and p.name == name for p in e.record.mount_points)]

    volumes = VolumesService(volume_store, volume_users)
    containers = ContainerManager(records, paths, channel, config.runtime, network=network,
                                  mounts=ContainerMounts(volume_store, volumes), settings=config.settings)
    # First of the sinks: an event changes what a list shows before anyone hears of it.
    containers.subscribe(lambda *_: records.changed())
    bus = EventBus()
    execs = ExecManager(containers, paths.daemon_lib / "execs")
    restarts = RestartPolicies(containers)
    for sink in (bus.container_event, restarts.on_event, execs.on_container_event):
        containers.subscribe(sink)
    execs.subscribe(bus.container_event)
    health = HealthMonitors(containers, execs)
    containers.subscribe(health.on_event)
    services: list[IServable] = [
        ContainersService(containers, Summaries()), SystemService(containers, config), ImagesService(containers),
        NetworksService(network), volumes,
        ArchiveService(containers, volume_store, volumes, paths.run / "daemon" / "tmp"),
        ExecsService(execs), ContainerOpsService(Operations(containers)), EventsService(bus),
        BuildsService(containers, paths.daemon_lib / "build-cache.json", paths.run / "daemon" / "builds"),
        RemovalService(containers),
    ]
    return Daemon(records, containers, network, execs, health, services)


async def serve(config: Config) -> int:
    """Runs the daemon until SIGTERM/SIGINT (services.common.service); its exit code."""
    return await run_service("daemon", lambda: start(config))


async def start(config: Config) -> Serving:
    paths = config.paths
    channel = grpc.channel(str(paths.highlevel_socket))
    daemon = build_daemon(config, channel)
    await daemon.load()
    server = grpc.ServiceServer(daemon.services)
    listener = listen_unix(paths.daemon_socket)
    await server.start(sock=listener.sock)
    containers_service = next(s for s in daemon.services if isinstance(s, ContainersService))
    # From here every change of the records moves the generation the apiserver's kept list is of.
    generation = Generation(generation_path(paths.daemon_socket))
    daemon.records.on_change = generation.bump
    list_lane = ListLane(containers_service.list_rows, generation)
    await list_lane.start(paths.daemon_socket)
    log.info("started", highlevel=str(paths.highlevel_socket))

    async def stop() -> None:
        await list_lane.close()
        generation.close()  # its lock goes: apiservers keep nothing of ours from now on
        server.close()
        await server.wait_closed()
        await daemon.close()
        channel.close()

    daemon_config.publish(paths, config.settings.current)  # what docker info shows

    def reload() -> None:
        # dockerd's reload: the reloadable keys of the file read again; a bad file keeps what is in force.
        before = config.settings.current
        after = config.settings.reload()
        daemon_config.publish(paths, after)
        log.info("configuration reloaded", changed=sorted(k for k, v in after.in_force().items()
                                                           if before.in_force().get(k) != v))

    return Serving(listener, grpc_probe, stop, status=daemon.status, reload=reload)
