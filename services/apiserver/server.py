"""The aiohttp application: API version prefixes, Docker's errors, one module per resource."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog
from aiohttp import web
from grpclib.client import Channel

from services.apiserver.errors import error_response, from_skiff_error
from services.apiserver.models import API_VERSION, MIN_API_VERSION
from services.apiserver.streams import HijackableAppRunner
from services.common.config import Config
from services.common.errors import SkiffError
from services.common.service import Serving, http_probe, listen_unix, run_service
from services.gen.skiff.daemon.v1 import ContainersStub, ImagesStub, SystemStub

log = structlog.get_logger(service="apiserver")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(slots=True)
class Backend:
    """The daemon's gRPC stubs, shared by every handler (one HTTP/2 connection)."""

    containers: ContainersStub
    images: ImagesStub
    system: SystemStub
    config: Config


BACKEND = web.AppKey("backend", Backend)


def backend(request: web.Request) -> Backend:
    return request.app[BACKEND]


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("."))


@web.middleware
async def versions_and_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """``/v1.NN/`` checked against what we speak; typed errors become Docker's JSON."""
    wanted = request.match_info.get("api_version")
    if wanted:
        try:
            asked = _version_tuple(wanted)
        except ValueError:
            return error_response(400, f"invalid API version: {wanted}")
        if asked > _version_tuple(API_VERSION):
            return error_response(400, f"client version {wanted} is too new. Maximum supported API version is "
                                       f"{API_VERSION}")
        if asked < _version_tuple(MIN_API_VERSION):
            return error_response(400, f"client version {wanted} is too old. Minimum supported API version is "
                                       f"{MIN_API_VERSION}, please upgrade your client to a newer version")
    try:
        return await handler(request)
    except SkiffError as exc:
        return from_skiff_error(exc)
    except web.HTTPNotFound:
        return error_response(404, "page not found")
    except web.HTTPMethodNotAllowed:
        return error_response(405, "method not allowed")
    except web.HTTPException:
        raise
    except (ConnectionResetError, asyncio.CancelledError):
        raise
    except Exception as exc:  # a real fault: 500 with its text, logged with the traceback
        log.exception("handler failed", path=request.path)
        return error_response(500, f"{type(exc).__name__}: {exc}")


class Routes:
    """Each route twice: unprefixed and under ``/v{api_version}``."""

    def __init__(self, app: web.Application) -> None:
        self.router = app.router

    def add(self, method: str, path: str, handler: Handler) -> None:
        self.router.add_route(method, path, handler)
        self.router.add_route(method, r"/v{api_version:[0-9]+(\.[0-9]+)*}" + path, handler)


def make_app(config: Config) -> web.Application:
    from services.apiserver import containers, images, networks, system

    app = web.Application(middlewares=[versions_and_errors], client_max_size=0)
    channel = Channel(path=str(config.paths.daemon_socket))
    app[BACKEND] = Backend(ContainersStub(channel), ImagesStub(channel), SystemStub(channel), config)
    app[networks.STUB] = networks.NetworksStub(channel)

    async def close_channel(_: web.Application) -> None:
        channel.close()

    app.on_cleanup.append(close_channel)
    routes = Routes(app)
    from services.apiserver import archive, volumes  # area D

    for extra in (archive, volumes):
        extra.install(app, channel)
    from services.apiserver import swarm

    for module in (system, containers, images, networks, volumes, archive, swarm):
        module.register(routes)
    from services.apiserver import exec as exec_api  # area A
    from services.apiserver import operations

    exec_api.register(routes)
    operations.register(routes)
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
    # skiff.socket hands the socket over (mode 0660, group skiff), as docker.socket does for dockerd;
    # run by hand, the same mode and group.
    listener = listen_unix(config.paths.api_socket, mode=0o660, group="skiff", activation=True)
    await web.SockSite(runner, listener.sock).start()
    log.info("started", daemon=str(config.paths.daemon_socket))
    return Serving(listener, http_probe, runner.cleanup)
