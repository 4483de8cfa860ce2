"""The apiserver's composition root: the aiohttp application with its middleware, one Backend of the
daemon's stubs over one channel, and each resource module's routes."""

from __future__ import annotations

import asyncio

import structlog
from aiohttp import web

from services.apiserver import (
    archive,
    build,
    containers,
    containers_removal,
    images,
    images_auth,
    metrics,
    networks,
    swarm,
    system,
    volumes,
)
from services.apiserver import exec as exec_api
from services.apiserver.app import BACKEND, Backend, Routes, remember_started, versions_and_errors
from services.apiserver.streams import HijackableAppRunner
from services.common import api_endpoints, grpc, tls_front
from services.common.config import Config
from services.common.service import Listener, Serving, http_probe, listen_tcp, listen_unix, run_service, tcp_probe

log = structlog.get_logger(service="apiserver")
RESOURCES = (system, containers, containers_removal, exec_api, archive, images, images_auth, networks, volumes, swarm,
             build)


def make_app(config: Config) -> web.Application:
    app = web.Application(middlewares=[versions_and_errors], client_max_size=0)
    app.on_response_prepare.append(remember_started)  # an error after a stream started ends it, no garbling
    channel = grpc.channel(str(config.paths.daemon_socket))
    app[BACKEND] = Backend.over(channel, config)
    metrics.attach(app, config, app[BACKEND].system)  # nothing unless --metrics-addr

    async def close_channel(_: web.Application) -> None:
        channel.close()

    app.on_cleanup.append(close_channel)
    routes = Routes(app)
    for module in RESOURCES:
        module.register(routes)
    return app


async def serve(config: Config) -> int:
    """Runs the API until SIGTERM/SIGINT (services.common.service); its exit code."""
    return await run_service("apiserver", lambda: start(config))


async def start(config: Config) -> Serving:
    config.paths.run.mkdir(parents=True, exist_ok=True)
    app = make_app(config)
    # Streams (wait, logs -f, attach) may last forever: give them a second, then close them.
    runner = HijackableAppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    fronts: list[asyncio.Server] = []
    listeners = await listen_api(runner, config, fronts)
    log.info("started", daemon=str(config.paths.daemon_socket))
    first = listeners[0]

    async def stop() -> None:
        for front in fronts:
            front.close()
        await runner.cleanup()

    return Serving(first, tcp_probe if first.path.startswith("tcp://") else http_probe, stop,
                   reload=config.settings.reload, more=listeners[1:])


async def listen_api(runner: web.AppRunner, config: Config, fronts: list[asyncio.Server]) -> list[Listener]:
    """Every -H/hosts endpoint (services.common.api_endpoints), UNIX ones first (the probe's). A TLS one is
    served through services.common.tls_front (a client's half-close must reach a hijacked stream)."""
    endpoints, warnings = api_endpoints.plan(config.settings.current)
    for warning in warnings:
        log.warning(warning)
    listeners: list[Listener] = []
    try:
        for endpoint in sorted(endpoints, key=lambda e: e.scheme == "tcp"):
            if endpoint.scheme == "tcp":
                listener = listen_tcp(endpoint.address)
            else:
                # skiff.socket hands the socket over (mode 0660, group skiff), as docker.socket does for
                # dockerd (fd://); run by hand, the same mode and group.
                listener = listen_unix(endpoint.address or config.paths.api_socket, mode=0o660, group="skiff",
                                       activation=endpoint.scheme == "fd")
            listeners.append(listener)
            if endpoint.tls is not None:
                assert runner.server is not None
                fronts.append(await tls_front.serve(listener.sock, endpoint.tls.context(), runner.server))
            else:
                await web.SockSite(runner, listener.sock).start()
    except BaseException:
        for front in fronts:
            front.close()
        for listener in listeners:
            listener.close()
        raise
    return listeners
