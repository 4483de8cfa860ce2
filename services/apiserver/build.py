"""POST /build (Docker's classic builder, the API docker-py, docker-compose and the docker CLI's
non-BuildKit path use) and POST /build/prune: the query's options checked and sent with the context
to the daemon's Builds service, its messages streamed back as Docker's JSON lines ({"stream"},
{"aux": {"ID"}}, {"errorDetail"})."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import betterproto
from aiohttp import web

from services.apiserver.app import Routes, backend
from services.apiserver.images_progress import line
from services.apiserver.params import flag
from services.common.errors import InvalidArgument, NotSupported, SkiffError
from services.common.grpc import call, client_errors
from services.gen.skiff.daemon.v1 import BuildCacheRecord, BuildChunk, BuildOptions, BuildPruneRequest, Ulimit

CHUNK = 1 << 20
WATCH_INTERVAL = 0.25  # seconds between looks at the client's connection


class FramedChunk(BuildChunk):
    """A BuildChunk whose context bytes are framed here (tag, length, the bytes): betterproto's
    rust codec encodes a bytes field at ~40 ns a byte (1.7 ms for a 45 KB context, 20 ms for 450 KB),
    where framing them is one copy. The options are encoded as usual."""

    def __bytes__(self) -> bytes:
        parts = []
        if betterproto.serialized_on_wire(self.options):
            encoded = bytes(self.options)
            parts += [b"\x0a", _varint(len(encoded)), encoded]   # field 1, length-delimited
        if self.data:
            parts += [b"\x12", _varint(len(self.data)), self.data]  # field 2, length-delimited
        return b"".join(parts)


def _varint(number: int) -> bytes:
    out = bytearray()
    while number > 0x7F:
        out.append((number & 0x7F) | 0x80)
        number >>= 7
    out.append(number)
    return bytes(out)


def _json_query(request: web.Request, name: str, default: Any) -> Any:
    raw = request.query.get(name)
    if not raw:
        return default
    try:
        return json.loads(raw)
    except ValueError:
        raise InvalidArgument(f"invalid {name} parameter: {raw}") from None


def _int64(request: web.Request, name: str) -> int:
    """A number of the query (0 when absent): int64 as dockerd's Int64ValueOrZero (memory in bytes
    passes 2 GiB, past params.int_query's int32)."""
    raw = request.query.get(name, "")
    try:
        number = int(raw) if raw else 0
    except ValueError:
        raise InvalidArgument(f"invalid value for {name}: {raw}") from None
    if not -(2**63) <= number < 2**63:
        raise InvalidArgument(f"invalid value for {name}: {raw} is out of range")
    return number


def options_of(request: web.Request) -> BuildOptions:
    q = request.query
    if flag(request, "squash"):
        raise InvalidArgument("squash is only supported with experimental mode")
    if q.get("remote"):
        raise NotSupported("remote build contexts (remote=) are not supported: send the context as the body")
    if q.get("version") == "2":
        raise InvalidArgument("BuildKit (version=2) is not supported: Skiff runs Docker's classic builder "
                              "(DOCKER_BUILDKIT=0)")
    if q.get("outputs"):
        raise InvalidArgument("outputs are only supported by BuildKit")
    build_args = _json_query(request, "buildargs", {})
    labels = _json_query(request, "labels", {})
    cache_from = _json_query(request, "cachefrom", [])
    ulimits = _json_query(request, "ulimits", [])
    if not isinstance(build_args, dict) or not isinstance(labels, dict) or not isinstance(cache_from, list):
        raise InvalidArgument("buildargs and labels must be JSON objects, cachefrom a JSON list")
    return BuildOptions(
        dockerfile=q.get("dockerfile", ""), tags=q.getall("t", []),
        build_args={str(k): str(v) for k, v in build_args.items() if v is not None},
        build_args_null={str(k): True for k, v in build_args.items() if v is None},
        labels={str(k): str(v) for k, v in labels.items()}, target=q.get("target", ""),
        no_cache=flag(request, "nocache"), pull=flag(request, "pull"), remove=flag(request, "rm", True),
        force_remove=flag(request, "forcerm"), quiet=flag(request, "q"), network_mode=q.get("networkmode", ""),
        memory=_int64(request, "memory"), cpu_shares=_int64(request, "cpushares"), shm_size=_int64(request, "shmsize"),
        ulimits=[Ulimit(name=u.get("Name", ""), soft=int(u.get("Soft", 0)), hard=int(u.get("Hard", 0)))
                 for u in ulimits if isinstance(u, dict)],
        cache_from=[str(c) for c in cache_from], platform=q.get("platform", ""),
        memory_swap=_int64(request, "memswap"), cpu_period=_int64(request, "cpuperiod"),
        cpu_quota=_int64(request, "cpuquota"), cpuset_cpus=q.get("cpusetcpus", ""),
        cpuset_mems=q.get("cpusetmems", ""), extra_hosts=q.getall("extrahosts", []))


async def build(request: web.Request) -> web.StreamResponse:
    options = options_of(request)

    async def chunks() -> AsyncIterator[BuildChunk]:
        # The body as it arrives, gathered into messages of up to CHUNK (a read gives what one socket
        # read brought, often a few KiB: each gRPC message costs both sides encoding and framing).
        first = FramedChunk(options=options)
        held: list[bytes] = []
        size = 0
        while data := await request.content.readany():
            held.append(data)
            size += len(data)
            if size >= CHUNK:
                if first is not None:
                    yield first
                    first = None
                yield FramedChunk(data=b"".join(held))
                held, size = [], 0
        if first is not None:
            first.data = b"".join(held)  # a small context travels with the options: one message
            yield first
        elif held:
            yield FramedChunk(data=b"".join(held))

    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    relay = asyncio.ensure_future(_relay(request, response, chunks()))
    try:
        # aiohttp does not cancel a handler whose client went away: a build would run on for nobody
        # (a RUN step's container with it). Its connection is watched; a close cancels the build.
        while not relay.done():
            await asyncio.wait([relay], timeout=WATCH_INTERVAL)
            transport = request.transport
            if not relay.done() and (transport is None or transport.is_closing()):
                relay.cancel()
        return relay.result()
    finally:
        relay.cancel()


async def _relay(request: web.Request, response: web.StreamResponse,
                 chunks: AsyncIterator[BuildChunk]) -> web.StreamResponse:
    try:
        with client_errors():
            async for msg in backend(request).builds.build(chunks):
                if not response.prepared:
                    await response.prepare(request)
                out = [line({"stream": text}) for text in msg.stream]
                if msg.image_id:
                    out.append(line({"aux": {"ID": msg.image_id}}))
                if msg.error:
                    out.append(line({"errorDetail": {"code": msg.error_code, "message": msg.error},
                                     "error": msg.error}))
                await response.write(b"".join(out))
    except SkiffError as exc:
        if not response.prepared:
            raise
        await response.write(line({"errorDetail": {"message": exc.message}, "error": exc.message}))
    if not response.prepared:
        await response.prepare(request)
    await response.write_eof()
    return response


async def prune(request: web.Request) -> web.Response:
    reply = await call(backend(request).builds.prune(BuildPruneRequest(all=flag(request, "all"))))
    return web.json_response({"CachesDeleted": list(reply.caches_deleted) or None,
                              "SpaceReclaimed": reply.space_reclaimed})


def register(routes: Routes) -> None:
    routes.add("POST", "/build", build)
    routes.add("POST", "/build/prune", prune)


def build_cache_rows(records: list[BuildCacheRecord]) -> list[dict[str, Any]]:
    """/system/df's BuildCache: one row a cached step."""
    return [{"ID": r.id, "Parent": r.parent, "Parents": [r.parent] if r.parent else [], "Type": r.type,
             "Description": r.description, "InUse": r.in_use, "Shared": r.shared, "Size": r.size,
             "CreatedAt": r.created_at, "LastUsedAt": r.last_used_at, "UsageCount": r.usage_count}
            for r in records]
