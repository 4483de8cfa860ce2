"""``skiff-apiserver --metrics-addr HOST:PORT``: a Prometheus text endpoint (Docker's ``metrics-addr``
convention; off by default), made with the prometheus_client library.

- ``skiff_api_requests_total{method,route,status}``: every API request, by route template
  (``/containers/{id}/start``; an unknown path is ``unmatched``, so the label set stays bounded);
- ``skiff_api_request_seconds{method,route}`` and ``skiff_launch_seconds`` (``POST .../start``
  answered without error): latency histograms;
- ``skiff_containers_running`` (the daemon's count), ``skiff_shims`` (live shims in highlevel's task
  folders), ``skiff_service_restarts_total{service}`` (a new pid behind daemon.sock or
  highlevel.sock, read with SO_PEERCRED): refreshed every ``--metrics-refresh`` seconds (5) by one task;
- the client library's own process metrics (the apiserver's memory, fds, start time).

The endpoint is the library's HTTP server thread: it reads only what the loop already computed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web
from prometheus_client import Counter, Gauge, Histogram, start_http_server

from services.common.config import Config
from services.common.grpc import call
from services.gen.skiff.daemon.v1 import Empty, SystemStub

REFRESH = 5.0
_VERSION = re.compile(r"^/v\{api_version[^}]*\}")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

REQUESTS = Counter("skiff_api_requests", "Docker Engine API requests", ("method", "route", "status"))
REQUEST_SECONDS = Histogram("skiff_api_request_seconds", "API request latency", ("method", "route"),
                            buckets=LATENCY_BUCKETS)
LAUNCH_SECONDS = Histogram("skiff_launch_seconds", "Container start latency (POST /containers/{id}/start)",
                           buckets=LATENCY_BUCKETS)
RUNNING = Gauge("skiff_containers_running", "Running containers, as the daemon counts them")
SHIMS = Gauge("skiff_shims", "Live shims (one per task)")
RESTARTS = Counter("skiff_service_restarts", "Restarts of a service seen by the apiserver", ("service",))

_address: str | None = None
_refresh = REFRESH


def enable(address: str, *, refresh: float = REFRESH) -> None:
    """Serves the endpoint on ``host:port`` (a thread of the client library), the gauges read every
    ``refresh`` seconds; raises OSError when it cannot listen."""
    global _address, _refresh
    host, _, port = address.rpartition(":")
    start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1")
    _address, _refresh = address, refresh


def route_of(request: web.Request) -> str:
    resource = request.match_info.route.resource
    if resource is None:
        return "unmatched"
    return _VERSION.sub("", resource.canonical) or "/"


@web.middleware
async def measure(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                  ) -> web.StreamResponse:
    started = time.monotonic()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        route = route_of(request)
        elapsed = time.monotonic() - started
        REQUESTS.labels(request.method, route, str(status)).inc()
        REQUEST_SECONDS.labels(request.method, route).observe(elapsed)
        if request.method == "POST" and route == "/containers/{id}/start" and status < 400:
            LAUNCH_SECONDS.observe(elapsed)


def attach(app: web.Application, config: Config, system: SystemStub) -> None:
    """When enabled: the middleware first (it sees the final status), and the refresher's life tied
    to the app's; ``system`` is the daemon's System service (its running count)."""
    if _address is None:
        return
    app.middlewares.insert(0, measure)
    task: list[asyncio.Task[None]] = []

    async def begin(_: web.Application) -> None:
        task.append(asyncio.create_task(refresh(config, system)))

    async def end(_: web.Application) -> None:
        for t in task:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t

    app.on_startup.append(begin)
    app.on_cleanup.append(end)


async def refresh(config: Config, system: SystemStub) -> None:
    pids: dict[str, int] = {}
    sockets = {"daemon": config.paths.daemon_socket, "highlevel": config.paths.highlevel_socket}
    while True:
        # The daemon may be down or busy: the gauge keeps its last value. A short refresh does not
        # shorten the answer's bound below 1 s, or a loaded daemon would never be counted.
        with contextlib.suppress(Exception):
            RUNNING.set((await asyncio.wait_for(call(system.info(Empty())), max(_refresh, 1.0))).running)
        SHIMS.set(await asyncio.to_thread(live_shims, config.paths.highlevel_run / "t"))
        for service, path in sockets.items():
            pid = await asyncio.to_thread(server_pid, str(path))
            if pid is None:
                continue
            if service in pids and pids[service] != pid:
                RESTARTS.labels(service).inc()
            pids[service] = pid
        await asyncio.sleep(_refresh)


def live_shims(folder: Path) -> int:
    count = 0
    with contextlib.suppress(OSError):
        for task in folder.iterdir():
            with contextlib.suppress(OSError, ValueError):
                os.kill(int((task / "shim.pid").read_text()), 0)
                count += 1
    return count


def server_pid(path: str) -> int | None:
    """The pid of the process serving a UNIX socket (its credentials as the connection saw them)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
            pid, _, _ = struct.unpack("3i", probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        except OSError:
            return None
    return pid
