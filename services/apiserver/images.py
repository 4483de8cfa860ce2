"""Image endpoints: list, inspect, load (docker load), remove."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
from pathlib import Path

from aiohttp import web

from services.apiserver import images_ops, models
from services.apiserver.containers import flag, parse_filters
from services.apiserver.images_filters import filter_images
from services.apiserver.server import Routes, backend
from services.common.grpc import call
from services.gen.skiff import highlevel

hl = highlevel.v1
CHUNK = 1 << 20


async def list_(request: web.Request) -> web.Response:
    reply = await call(backend(request).images.list(hl.ListImagesRequest()))
    images = filter_images(list(reply.images), parse_filters(request.query.get("filters")))
    return web.json_response([models.image_summary(i) for i in images])


async def inspect(request: web.Request) -> web.Response:
    reply = await call(backend(request).images.inspect(hl.InspectImageRequest(reference=request.match_info["name"])))
    return web.json_response(models.image_inspect(reply.image))


def _open_upload(folder: Path) -> tuple[int, str]:
    folder.mkdir(parents=True, exist_ok=True)
    return tempfile.mkstemp(prefix="load-", suffix=".tar", dir=folder)


async def load(request: web.Request) -> web.StreamResponse:
    """The archive goes to a file beside the sockets (highlevel reads it from there: same host)."""
    folder = backend(request).config.paths.run / "apiserver"
    fd, path = await asyncio.to_thread(_open_upload, folder)
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := await request.content.read(CHUNK):
                await asyncio.to_thread(out.write, chunk)
        reply = await call(backend(request).images.load(hl.LoadImagesRequest(path=path)))
    finally:
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(os.unlink, path)
    body = b"".join(json.dumps({"stream": f"{m}\n"}).encode() + b"\n" for m in reply.messages)
    return web.Response(body=body, content_type="application/json")


async def remove(request: web.Request) -> web.Response:
    reply = await call(backend(request).images.remove(hl.RemoveImageRequest(
        reference=request.match_info["name"], force=flag(request, "force"), no_prune=flag(request, "noprune"))))
    items = []
    for item in reply.items:
        if item.untagged:
            items.append({"Untagged": item.untagged})
        if item.deleted:
            items.append({"Deleted": item.deleted})
    return web.json_response(items)


def register(routes: Routes) -> None:
    images_ops.register(routes)
    routes.add("GET", "/images/json", list_)
    routes.add("POST", "/images/load", load)
    routes.add("GET", "/images/{name:.+}/json", inspect)
    routes.add("DELETE", "/images/{name:.+}", remove)
