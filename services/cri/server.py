"""skiff-cri's composition root: the CRI gRPC server on ``<run>/cri.sock`` and the streaming server.

Builds the state (records from ``<lib>/cri``), the managers of pods and containers over one channel
to highlevel, the streaming server (a loopback HTTP port for exec, attach and port-forward URLs), and
serves ``runtime.v1.RuntimeService`` and ``runtime.v1.ImageService`` (services/cri/images.py).
"""

from __future__ import annotations

import asyncio

import structlog
from grpclib.client import Channel

from services.common.grpc import ServiceServer, while_unavailable
from services.common.service import Serving, grpc_probe, listen_unix, run_service
from services.cri.containers import ContainerManager
from services.cri.execs import Execs
from services.cri.images import CriImageService
from services.cri.runtime_service import CriRuntimeService
from services.cri.sandboxes import SandboxManager
from services.cri.settings import CriSettings
from services.cri.state import CriState
from services.cri.stats import Stats
from services.cri.streaming.server import StreamingServer

log = structlog.get_logger(service="cri")


async def serve(settings: CriSettings) -> int:
    """Runs skiff-cri until SIGTERM/SIGINT (services.common.service); its exit code."""
    return await run_service("cri", lambda: start(settings))


async def start(settings: CriSettings) -> Serving:
    for folder in (settings.state, settings.run):
        folder.mkdir(parents=True, exist_ok=True)
    channel = Channel(path=str(settings.paths.highlevel_socket))
    state = await asyncio.to_thread(CriState, settings)
    containers = ContainerManager(state, channel)
    sandboxes = SandboxManager(state, containers.tasks, containers.stop_all, containers.remove_all)
    # highlevel may still be starting (skiff up starts the services in order, systemd may not).
    await while_unavailable(containers.recover, within=60)
    execs = Execs(state, containers)
    streaming = StreamingServer(execs)
    await streaming.start()
    runtime = CriRuntimeService(state, sandboxes, containers, execs, Stats(state, containers.tasks), streaming)
    server = ServiceServer([runtime, CriImageService(channel, settings.paths)])
    listener = listen_unix(settings.socket, activation=True)
    await server.start(sock=listener.sock)
    log.info("started", socket=str(settings.socket), pods=len(state.sandboxes), containers=len(state.containers),
             streaming=streaming.base_url)

    async def stop() -> None:
        # Stopping skiff-cri never stops a pod: the tasks stay with highlevel, the records on disk.
        server.close()
        await server.wait_closed()
        await streaming.close()
        for watcher in list(containers.watchers.values()):
            watcher.cancel()
        channel.close()

    return Serving(listener, grpc_probe, stop,
                   status=lambda: f"{len(state.sandboxes)} pods, {len(state.containers)} containers")
