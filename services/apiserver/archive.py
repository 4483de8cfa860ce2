"""A container's filesystem: docker cp (archive GET/HEAD/PUT), export and changes, streamed from the daemon."""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import AsyncIterator

from aiohttp import web

from services.apiserver.app import Routes, backend
from services.apiserver.params import flag
from services.common.errors import InvalidArgument
from services.common.grpc import call, client_errors
from services.gen.skiff.daemon.v1 import ArchiveChunk, ArchivePathRequest, PathStat

TAR = "application/x-tar"
CHUNK = 256 * 1024


def _path(request: web.Request) -> str:
    path = request.query.get("path", "")
    if not path:
        raise InvalidArgument("path is required")
    return path


def stat_header(stat: PathStat) -> str:
    """X-Docker-Container-Path-Stat: base64 of Docker's container.PathStat JSON."""
    body = {"name": stat.name, "size": stat.size, "mode": stat.mode, "mtime": stat.mtime,
            "linkTarget": stat.link_target}
    return base64.b64encode(json.dumps(body).encode()).decode()


async def head(request: web.Request) -> web.Response:
    stat = await call(backend(request).archive.stat(ArchivePathRequest(id=request.match_info["id"],
                                                                       path=_path(request))))
    return web.Response(status=200, headers={"X-Docker-Container-Path-Stat": stat_header(stat)})


async def _stream(request: web.Request, chunks: AsyncIterator[ArchiveChunk], with_stat: bool) -> web.StreamResponse:
    """The first message decides the status (an error before it is a typed answer); then data."""
    it = chunks.__aiter__()
    response = web.StreamResponse(status=200)
    response.content_type = TAR
    with client_errors():
        try:
            first = await it.__anext__()
        except StopAsyncIteration:
            first = ArchiveChunk()
        if with_stat:
            response.headers["X-Docker-Container-Path-Stat"] = stat_header(first.stat)
        await response.prepare(request)
        if first.data and not await _send(response, first.data):
            return response
        async for chunk in it:
            if not await _send(response, chunk.data):
                return response
    with contextlib.suppress(ConnectionResetError):  # the client had all it wanted and went
        await response.write_eof()
    return response


async def _send(response: web.StreamResponse, data: bytes) -> bool:
    """False when the client has gone (it stopped reading, as docker-py's get_archive may): nothing to
    report. Caught here, at the write: client_errors would take it for the daemon's connection."""
    try:
        await response.write(data)
    except ConnectionResetError:
        return False
    return True


async def get(request: web.Request) -> web.StreamResponse:
    chunks = backend(request).archive.get(ArchivePathRequest(id=request.match_info["id"], path=_path(request)))
    return await _stream(request, chunks, with_stat=True)


async def put(request: web.Request) -> web.Response:
    path = _path(request)
    target = ArchiveChunk(id=request.match_info["id"], path=path,
                          no_overwrite_dir_non_dir=flag(request, "noOverwriteDirNonDir"),
                          copy_uid_gid=flag(request, "copyUIDGID"))

    async def body() -> AsyncIterator[ArchiveChunk]:
        yield target
        while chunk := await request.content.read(CHUNK):
            yield ArchiveChunk(data=chunk)

    await call(backend(request).archive.put(body()))
    return web.Response(status=200)


async def export(request: web.Request) -> web.StreamResponse:
    chunks = backend(request).archive.export(ArchivePathRequest(id=request.match_info["id"]))
    return await _stream(request, chunks, with_stat=False)


async def changes(request: web.Request) -> web.Response:
    reply = await call(backend(request).archive.changes(ArchivePathRequest(id=request.match_info["id"])))
    return web.json_response([{"Path": c.path, "Kind": c.kind} for c in reply.changes] or None)


def register(routes: Routes) -> None:
    routes.add("GET", "/containers/{id}/archive", get)
    routes.add("HEAD", "/containers/{id}/archive", head)
    routes.add("PUT", "/containers/{id}/archive", put)
    routes.add("GET", "/containers/{id}/export", export)
    routes.add("GET", "/containers/{id}/changes", changes)
