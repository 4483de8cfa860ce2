"""Container operations (restart, pause, unpause, top, stats, rename, update) and GET /events."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from aiohttp import web

from services.apiserver.containers import flag, int_query, parse_filters
from services.apiserver.exec import _body, ops
from services.apiserver.models import parse_time
from services.apiserver.server import Routes, backend
from services.common.errors import InvalidArgument
from services.common.grpc import call, client_errors
from services.gen.skiff.daemon.v1 import (
    ContainerRef,
    EventsStub,
    EventsSubscribeRequest,
    RenameRequest,
    StatsSample,
    StopRequest,
    UpdateContainerRequest,
)

STATS_INTERVAL = 1.0  # dockerd samples once a second


async def restart(request: web.Request) -> web.Response:
    timeout = int_query(request, "t")
    await call(ops(request).restart(StopRequest(id=request.match_info["id"], timeout=timeout or 0,
                                                timeout_set=timeout is not None,
                                                signal=request.query.get("signal", ""))))
    return web.Response(status=204)


async def pause(request: web.Request) -> web.Response:
    await call(ops(request).pause(ContainerRef(id=request.match_info["id"])))
    return web.Response(status=204)


async def unpause(request: web.Request) -> web.Response:
    await call(ops(request).unpause(ContainerRef(id=request.match_info["id"])))
    return web.Response(status=204)


async def top(request: web.Request) -> web.Response:
    reply = await call(ops(request).top(ContainerRef(id=request.match_info["id"])))
    return web.json_response({"Titles": list(reply.titles), "Processes": [list(r.cells) for r in reply.rows]})


async def rename(request: web.Request) -> web.Response:
    name = request.query.get("name", "")
    await call(ops(request).rename(RenameRequest(id=request.match_info["id"], name=name)))
    return web.Response(status=204)


def _int(body: dict[str, Any], key: str) -> int:
    value = body.get(key) or 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"invalid {key}: expected an integer")
    return value


async def update(request: web.Request) -> web.Response:
    body = await _body(request)
    policy = body.get("RestartPolicy") or {}
    if not isinstance(policy, dict):
        raise InvalidArgument("invalid RestartPolicy: expected an object")
    nano_cpus = _int(body, "NanoCpus")
    quota, period = _int(body, "CpuQuota"), _int(body, "CpuPeriod")
    if nano_cpus:
        period = period or 100_000
        quota = nano_cpus * period // 1_000_000_000
    reply = await call(ops(request).update(UpdateContainerRequest(
        id=request.match_info["id"], memory=_int(body, "Memory"), pids_limit=_int(body, "PidsLimit"),
        cpu_quota=quota, cpu_period=period, cpu_shares=_int(body, "CpuShares"), nano_cpus=nano_cpus,
        restart_policy=str(policy.get("Name") or ""), restart_max_retries=_int(policy, "MaximumRetryCount"))))
    return web.json_response({"Warnings": list(reply.warnings)})


def stats_json(sample: StatsSample, previous: StatsSample | None) -> dict[str, Any]:
    """Docker's stats shape from the runtime's numbers; precpu is the previous sample (zeros at first)."""
    raw = json.loads(sample.raw or b"{}")
    memory_stats: dict[str, Any] = {}
    if sample.raw:
        stats = (raw.get("memory") or {}).get("raw") or {}
        memory_stats = {"usage": sample.memory_usage, "limit": sample.memory_limit, "stats": stats}
        if "max_usage" in ((raw.get("memory") or {}).get("usage") or {}):
            memory_stats["max_usage"] = raw["memory"]["usage"]["max_usage"]

    def cpu(s: StatsSample | None) -> dict[str, Any]:
        if s is None or not s.raw:
            return {"cpu_usage": {"total_usage": 0, "usage_in_kernelmode": 0, "usage_in_usermode": 0},
                    "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0}}
        usage = (json.loads(s.raw).get("cpu") or {}).get("usage") or {}
        return {"cpu_usage": {"total_usage": s.cpu_usage_ns, "usage_in_kernelmode": usage.get("kernel", 0),
                              "usage_in_usermode": usage.get("user", 0)},
                "system_cpu_usage": s.system_cpu_ns, "online_cpus": s.online_cpus,
                "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0}}

    return {
        "id": sample.id, "name": sample.name, "read": sample.read,
        "preread": previous.read if previous else "0001-01-01T00:00:00Z",
        "pids_stats": {"current": sample.pids_current} if sample.raw else {},
        "blkio_stats": {"io_service_bytes_recursive": None, "io_serviced_recursive": None},
        "num_procs": 0, "storage_stats": {},
        "cpu_stats": cpu(sample), "precpu_stats": cpu(previous), "memory_stats": memory_stats,
        "networks": {},
    }


async def stats(request: web.Request) -> web.StreamResponse:
    container = request.match_info["id"]
    stub = ops(request)
    stream, one_shot = flag(request, "stream", True), flag(request, "one-shot")
    first = await call(stub.stats(ContainerRef(id=container)))
    if not stream:
        previous = None
        if not one_shot and first.raw:
            # dockerd waits for a second sample so that the CLI can compute a cpu percentage.
            previous, first = first, await _next_sample(stub, container)
        return web.json_response(stats_json(first, previous))
    response = web.StreamResponse(status=200)
    response.content_type = "application/json"
    await response.prepare(request)
    previous: StatsSample | None = None
    sample = first
    while True:
        await response.write(json.dumps(stats_json(sample, previous)).encode() + b"\n")
        if not sample.raw:
            break  # stopped: one zero sample, then the end, as dockerd does
        previous, sample = sample, await _next_sample(stub, container)
    await response.write_eof()
    return response


async def _next_sample(stub: Any, container: str) -> StatsSample:
    await asyncio.sleep(STATS_INTERVAL)  # the sampling period itself, not a wait for a state
    return await call(stub.stats(ContainerRef(id=container)))


def _since(value: str | None, name: str) -> int:
    """Docker's since/until: UNIX seconds with an optional fraction; a duration like 10m is relative."""
    if not value:
        return 0
    try:
        return int(float(value) * 1e9)
    except ValueError:
        pass
    units = {"s": 1, "m": 60, "h": 3600}
    if value[-1] in units and value[:-1].replace(".", "", 1).isdigit():
        return time.time_ns() - int(float(value[:-1]) * units[value[-1]] * 1e9)
    seconds = parse_time(value)
    if not seconds:
        raise InvalidArgument(f"invalid value for {name}: {value}")
    return int(seconds * 1e9)


async def events(request: web.Request) -> web.StreamResponse:
    since, until = _since(request.query.get("since"), "since"), _since(request.query.get("until"), "until")
    filters = {k: json.dumps(v) for k, v in parse_filters(request.query.get("filters")).items()}
    stub = EventsStub(backend(request).containers.channel)
    response = web.StreamResponse(status=200)
    response.content_type = "application/json"
    await response.prepare(request)
    with client_errors():
        async for e in stub.subscribe(EventsSubscribeRequest(since_ns=since, until_ns=until, filters=filters)):
            body = {"Type": e.type, "Action": e.action, "Actor": {"ID": e.id, "Attributes": dict(e.attributes)},
                    "scope": e.scope, "time": e.time_nano // 1_000_000_000, "timeNano": e.time_nano}
            if e.type == "container":
                body |= {"status": e.action, "id": e.id, "from": e.attributes.get("image", "")}
            await response.write(json.dumps(body).encode() + b"\n")
    await response.write_eof()
    return response


def register(routes: Routes) -> None:
    routes.add("POST", "/containers/{id}/restart", restart)
    routes.add("POST", "/containers/{id}/pause", pause)
    routes.add("POST", "/containers/{id}/unpause", unpause)
    routes.add("GET", "/containers/{id}/top", top)
    routes.add("GET", "/containers/{id}/stats", stats)
    routes.add("POST", "/containers/{id}/rename", rename)
    routes.add("POST", "/containers/{id}/update", update)
    routes.add("GET", "/events", events)
