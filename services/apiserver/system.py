"""System endpoints: /_ping, /version, /info."""

from __future__ import annotations

import asyncio
import socket

from aiohttp import web

from services.apiserver import models
from services.apiserver.server import Routes, backend
from services.common.grpc import call
from services.gen.skiff.daemon.v1 import Empty

PING_HEADERS = {
    "Api-Version": models.API_VERSION,
    "Docker-Experimental": "false",
    "Ostype": "linux",
    "Server": f"Skiff/{models.ENGINE_VERSION} (linux)",
    "Builder-Version": "1",
    "Cache-Control": "no-cache, no-store, must-revalidate",
    "Pragma": "no-cache",
}


async def ping(request: web.Request) -> web.Response:
    body = "" if request.method == "HEAD" else "OK"
    return web.Response(text=body, headers=PING_HEADERS, content_type="text/plain")


async def version(request: web.Request) -> web.Response:
    return web.json_response(models.version(), headers={"Api-Version": models.API_VERSION})


def _mem_total() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


async def info(request: web.Request) -> web.Response:
    data = await call(backend(request).system.info(Empty()))
    mem = await asyncio.to_thread(_mem_total)
    return web.json_response(models.info(data, socket.gethostname(), mem))


def register(routes: Routes) -> None:
    routes.add("GET", "/_ping", ping)
    routes.add("HEAD", "/_ping", ping)
    routes.add("GET", "/version", version)
    routes.add("GET", "/info", info)
