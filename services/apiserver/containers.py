"""Container endpoints: create, start, stop, kill, wait, remove, list, inspect, logs, attach."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import structlog
from aiohttp import web

from services.apiserver import models
from services.apiserver import stdin as stdin_pump
from services.apiserver.server import Routes, backend
from services.apiserver.streams import MULTIPLEXED, RAW, frame, hijack
from services.common.errors import Conflict, FailedPrecondition, InvalidArgument, SkiffError
from services.common.grpc import call, client_errors
from services.gen.skiff.daemon.v1 import (
    AttachRequest,
    ContainerOpsStub,
    ContainerRef,
    CreateContainerRequest,
    KillRequest,
    ListFilters,
    ListRequest,
    LogEntry,
    LogsRequest,
    RemoveRequest,
    State,
    StopRequest,
    WaitCondition,
    WaitRequest,
)

log = structlog.get_logger(service="apiserver")
WAIT_CONDITIONS = {
    "": WaitCondition.NOT_RUNNING, "not-running": WaitCondition.NOT_RUNNING,
    "next-exit": WaitCondition.NEXT_EXIT, "removed": WaitCondition.REMOVED,
}


def flag(request: web.Request, name: str, default: bool = False) -> bool:
    value = request.query.get(name)
    if value is None or value == "":
        return default
    return value.lower() not in ("0", "false", "no")


def int_query(request: web.Request, name: str, default: int | None = None) -> int | None:
    value = request.query.get(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise InvalidArgument(f"invalid value for {name}: {value}") from None
    # The daemon's fields are int32: a larger number cannot cross the boundary (found by schemathesis).
    if not -(2**31) <= number < 2**31:
        raise InvalidArgument(f"invalid value for {name}: {value} is out of range")
    return number


def parse_filters(raw: str | None) -> dict[str, list[str]]:
    """Docker's ``filters``: {"name": ["a"]} or the older {"name": {"a": true}}."""
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        raise InvalidArgument(f"invalid filter: {raw}") from None
    if not isinstance(data, dict):
        raise InvalidArgument(f"invalid filter: {raw}")
    result: dict[str, list[str]] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            result[key] = [k for k, on in value.items() if on]
        elif isinstance(value, list):
            result[key] = [str(v) for v in value]
        else:
            raise InvalidArgument(f"invalid filter: {raw}")
    return result


async def create(request: web.Request) -> web.Response:
    try:
        body: Any = await request.json()
    except ValueError:
        raise InvalidArgument("invalid JSON body") from None
    try:
        config = models.container_config_from_request(body)
    except (TypeError, AttributeError, KeyError) as e:
        # The body is untyped client JSON: a value of the wrong type anywhere in it is the
        # client's mistake (400), not a fault of ours (500).
        raise InvalidArgument(f"invalid container config: {type(e).__name__}: {e}") from None
    reply = await call(backend(request).containers.create(
        CreateContainerRequest(name=request.query.get("name", ""), config=config)))
    return web.json_response({"Id": reply.id, "Warnings": list(reply.warnings)}, status=201)


async def start(request: web.Request) -> web.Response:
    try:
        await call(backend(request).containers.start(ContainerRef(id=request.match_info["id"])))
    except FailedPrecondition:
        return web.Response(status=304)  # already started
    return web.Response(status=204)


async def stop(request: web.Request) -> web.Response:
    timeout = int_query(request, "t")
    try:
        await call(backend(request).containers.stop(StopRequest(
            id=request.match_info["id"], timeout=timeout or 0, timeout_set=timeout is not None,
            signal=request.query.get("signal", ""))))
    except FailedPrecondition:
        return web.Response(status=304)  # already stopped
    return web.Response(status=204)


async def kill(request: web.Request) -> web.Response:
    await call(backend(request).containers.kill(KillRequest(id=request.match_info["id"],
                                                            signal=request.query.get("signal", ""))))
    return web.Response(status=204)


async def remove(request: web.Request) -> web.Response:
    await call(backend(request).containers.remove(RemoveRequest(id=request.match_info["id"],
                                                                force=flag(request, "force"),
                                                                volumes=flag(request, "v"))))
    return web.Response(status=204)


async def wait(request: web.Request) -> web.StreamResponse:
    condition = request.query.get("condition", "")
    if condition not in WAIT_CONDITIONS:
        raise InvalidArgument(f"invalid condition: \"{condition}\"")
    stream = backend(request).containers.wait(WaitRequest(id=request.match_info["id"],
                                                          condition=WAIT_CONDITIONS[condition]))
    response: web.StreamResponse | None = None
    with client_errors():
        async for message in stream:
            if not message.exited:
                # Registered: the headers go out now, before the client starts the container.
                response = web.StreamResponse(status=200)
                response.content_type = "application/json"
                await response.prepare(request)
                continue
            body = json.dumps({"StatusCode": message.exit_code, "Error": None}).encode() + b"\n"
            if response is None:
                return web.Response(body=body, content_type="application/json")
            await response.write(body)
            await response.write_eof()
            return response
    raise InvalidArgument("wait ended without an exit status")


async def list_(request: web.Request) -> web.Response:
    filters = parse_filters(request.query.get("filters"))
    reply = await call(backend(request).containers.list_summaries(ListRequest(
        all=flag(request, "all"), limit=int_query(request, "limit", 0) or 0,
        filters=ListFilters(id=filters.get("id", []), name=filters.get("name", []),
                            label=filters.get("label", []), status=filters.get("status", [])))))
    return web.Response(body=reply.json, content_type="application/json")


async def inspect(request: web.Request) -> web.Response:
    record = await call(backend(request).containers.inspect(ContainerRef(id=request.match_info["id"])))
    return web.json_response(models.container_inspect(record))


def _payload(entry: LogEntry, timestamps: bool) -> bytes:
    return (entry.time.encode() + b" " + entry.data) if timestamps else entry.data


async def logs(request: web.Request) -> web.StreamResponse:
    stdout, stderr = flag(request, "stdout"), flag(request, "stderr")
    if not (stdout or stderr):
        raise InvalidArgument("Bad parameters: you must choose at least one stream")
    tail_text = request.query.get("tail", "all")
    tail = -1 if tail_text in ("", "all") else int_query(request, "tail", -1)
    timestamps = flag(request, "timestamps")
    from services.apiserver.operations import _since  # operations imports this module

    since = _since(request.query.get("since"), "since") / 1e9
    until = _since(request.query.get("until"), "until") / 1e9
    containers = backend(request).containers
    record = await call(containers.inspect(ContainerRef(id=request.match_info["id"])))
    tty = record.config.tty
    response = web.StreamResponse(status=200)
    response.content_type = RAW if tty else MULTIPLEXED
    await response.prepare(request)
    # Docker's --until: nothing written after it, and a follower stops there even when no entry comes.
    follow = flag(request, "follow")
    deadline = asyncio.timeout(max(0.0, until - time.time()) if until and follow else None)
    with client_errors(), contextlib.suppress(TimeoutError):
        async with deadline:
            async for entry in containers.logs(LogsRequest(
                    id=record.id, follow=follow, stdout=stdout, stderr=stderr,
                    tail=tail if tail is not None else -1, timestamps=timestamps)):
                if since or until:
                    at = models.parse_time(entry.time)
                    if until and at > until:
                        break
                    if since and at < since:
                        continue
                data = _payload(entry, timestamps)
                await response.write(data if tty else frame(entry.stream, data))
    await response.write_eof()
    return response


async def attach(request: web.Request) -> web.StreamResponse:
    containers = backend(request).containers
    stdout, stderr = flag(request, "stdout"), flag(request, "stderr")
    if not (flag(request, "stream", True) and (stdout or stderr)):
        record = await call(containers.inspect(ContainerRef(id=request.match_info["id"])))
        if record.state.status not in (State.CREATED, State.RUNNING, State.PAUSED, State.RESTARTING):
            raise Conflict("You cannot attach to a stopped container, start it first")
        return await hijack(request, record.config.tty)
    stream = containers.attach(AttachRequest(id=request.match_info["id"], stdout=stdout, stderr=stderr)).__aiter__()
    with client_errors():
        # The daemon's first (empty) entry says it is following: only then may the client start the
        # container. It also says what serving the stream needs (tty, stdin), and refuses a stopped one.
        info = (await stream.__anext__()).attached
    tty = info.tty
    # The upgrade answer goes out at once: the CLI starts the container only once it is attached.
    response = await hijack(request, tty)
    # Area A: the client's input goes to the container's stdin (closed at its end with StdinOnce).
    pump = stdin_pump.pump(request, ContainerOpsStub(containers.channel), info.id, "", info.stdin_once) \
        if flag(request, "stdin") and info.open_stdin else None
    try:
        with client_errors():
            async for entry in stream:
                await response.write(entry.data if tty else frame(entry.stream, entry.data))
    except SkiffError as exc:
        # Headers are gone: the error can only end the stream, as dockerd does.
        log.warning("attach ended", id=record.id, error=exc.message)
    finally:
        await stdin_pump.stop(pump)
    await response.write_eof()
    return response


def register(routes: Routes) -> None:
    routes.add("POST", "/containers/create", create)
    routes.add("GET", "/containers/json", list_)
    routes.add("GET", "/containers/{id}/json", inspect)
    routes.add("POST", "/containers/{id}/start", start)
    routes.add("POST", "/containers/{id}/stop", stop)
    routes.add("POST", "/containers/{id}/kill", kill)
    routes.add("POST", "/containers/{id}/wait", wait)
    routes.add("DELETE", "/containers/{id}", remove)
    routes.add("GET", "/containers/{id}/logs", logs)
    routes.add("POST", "/containers/{id}/attach", attach)
