"""What every resource module stands on: the daemon's stubs (one Backend per app), the route table
that serves each route with and without ``/v1.NN``, and the middleware that checks the version and
turns typed errors into Docker's JSON."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog
from aiohttp import web
from grpclib.client import Channel

from services.apiserver.errors import error_response, from_skiff_error
from services.common.config import Config
from services.common.errors import SkiffError
from services.dockermodel.system import API_VERSION, MIN_API_VERSION
from services.gen.skiff.daemon.v1 import (
    ArchiveStub,
    BuildsStub,
    ContainerOpsStub,
    ContainerRemovalStub,
    ContainersStub,
    EventsStub,
    ExecsStub,
    ImagesStub,
    NetworksStub,
    SystemStub,
    VolumesStub,
)

log = structlog.get_logger(service="apiserver")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(slots=True)
class Backend:
    """The daemon's gRPC stubs, shared by every handler (one channel: one HTTP/2 connection)."""

    containers: ContainersStub
    ops: ContainerOpsStub
    removal: ContainerRemovalStub
    execs: ExecsStub
    archive: ArchiveStub
    images: ImagesStub
    networks: NetworksStub
    volumes: VolumesStub
    events: EventsStub
    system: SystemStub
    config: Config
    builds: BuildsStub

    @classmethod
    def over(cls, channel: Channel, config: Config) -> Backend:
        return cls(ContainersStub(channel), ContainerOpsStub(channel), ContainerRemovalStub(channel),
                   ExecsStub(channel), ArchiveStub(channel),
                   ImagesStub(channel), NetworksStub(channel), VolumesStub(channel), EventsStub(channel),
                   SystemStub(channel), config, BuildsStub(channel))


BACKEND = web.AppKey("backend", Backend)


def backend(request: web.Request) -> Backend:
    return request.app[BACKEND]


class Routes:
    """Each route twice: unprefixed and under ``/v{api_version}``."""

    def __init__(self, app: web.Application) -> None:
        self.router = app.router

    def add(self, method: str, path: str, handler: Handler) -> None:
        self.router.add_route(method, path, handler)
        self.router.add_route(method, r"/v{api_version:[0-9]+(\.[0-9]+)*}" + path, handler)


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("."))


# The response a handler has started (its headers out): an error after that cannot be a response of its own.
STARTED = "skiff.started_response"


async def remember_started(request: web.Request, response: web.StreamResponse) -> None:
    """An ``on_response_prepare`` signal: which response this request has started."""
    request[STARTED] = response


def _end_started(request: web.Request, exc: BaseException) -> web.StreamResponse | None:
    """A streaming handler failed after its headers went out (the daemon died under a wait, logs -f,
    attach): an error response written now would land inside the stream and garble it, and the
    client would wait for the rest for ever. The connection is closed instead: the client sees the
    stream end early, at once."""
    started: web.StreamResponse | None = request.get(STARTED)
    if started is None:
        return None
    log.warning("stream cut", path=request.path, error=str(exc))
    if request.transport is not None:
        request.transport.close()
    return started


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
        return _end_started(request, exc) or from_skiff_error(exc)
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
        return _end_started(request, exc) or error_response(500, f"{type(exc).__name__}: {exc}")
