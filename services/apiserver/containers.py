"""Container endpoints: create, list, inspect, start, stop, restart, kill, pause, unpause, wait, remove,
rename, update, top, stats, logs, attach."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import structlog
from aiohttp import web

from services.apiserver import containers_filters, list_lane
from services.apiserver import stdin as stdin_pump
from services.apiserver.app import Routes, backend
from services.apiserver.params import flag, int_query, json_body, parse_filters, since_ns
from services.apiserver.streams import MULTIPLEXED, RAW, frame, hijack, relay
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound, NotSupported, SkiffError
from services.common.grpc import call, client_errors
from services.dockermodel.attach import check_attachable
from services.dockermodel.health import check_health_filter
from services.dockermodel.render import container_inspect, stats_json
from services.dockermodel.request import container_config_from_request
from services.dockermodel.times import parse_time
from services.gen.skiff.daemon.v1 import (
    AttachRequest,
    ContainerOpsStub,
    ContainerRef,
    ContainersStub,
    CreateContainerRequest,
    KillRequest,
    ListFilters,
    ListRequest,
    LogEntry,
    LogsRequest,
    LogStream,
    RemoveRequest,
    RenameRequest,
    StatsSample,
    StopRequest,
    TopRequest,
    UpdateContainerRequest,
    WaitCondition,
    WaitRequest,
)
from services.gen.skiff.highlevel.v1 import InspectImageRequest

log = structlog.get_logger(service="apiserver")
STATS_INTERVAL = 1.0  # dockerd samples once a second
WAIT_CONDITIONS = {
    "": WaitCondition.NOT_RUNNING, "not-running": WaitCondition.NOT_RUNNING,
    "next-exit": WaitCondition.NEXT_EXIT, "removed": WaitCondition.REMOVED,
}


async def create(request: web.Request) -> web.Response:
    try:
        body: Any = await request.json()
    except ValueError:
        raise InvalidArgument("invalid JSON body") from None
    try:
        config = container_config_from_request(body)
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
    check_health_filter(filters.get("health", []))
    containers_filters.check(filters)
    limit = int_query(request, "limit", 0) or 0
    here = containers_filters.wanted_here(filters)
    # before/since are positions in the list of every container, running or not.
    ordered = "before" in filters or "since" in filters
    all_ = flag(request, "all")

    def list_request() -> ListRequest:
        return ListRequest(
            all=all_ or ordered, limit=0 if here else limit,
            filters=ListFilters(id=filters.get("id", []), name=filters.get("name", []),
                                label=filters.get("label", []), status=filters.get("status", []),
                                health=filters.get("health", [])))

    # The same filters text and flags make the same request: the key of the list kept for it.
    key = (all_ or ordered, 0 if here else limit, request.query.get("filters", ""))
    body = await list_lane.answer(backend(request).config.paths.daemon_socket, key, list_request)
    if body is None:  # the lane cannot answer: gRPC does, errors with their kinds
        body = (await call(backend(request).containers.list_summaries(list_request()))).json
    if not here:
        return web.Response(body=body, content_type="application/json")
    ancestors = set()
    for ref in filters.get("ancestor", []):
        with contextlib.suppress(NotFound):  # dockerd: an unknown image matches nothing
            image = await call(backend(request).images.inspect(InspectImageRequest(reference=ref)))
            ancestors.add(image.image.id)
    marks: dict[str, str] = {}
    for key in ("before", "since"):
        for ref in filters.get(key, []):
            try:
                marks[key] = (await call(backend(request).containers.inspect(ContainerRef(id=ref)))).id
            except NotFound:
                raise NotFound(f"no such container {ref}") from None
    entries = containers_filters.apply(json.loads(body), filters, ancestors, marks.get("before"),
                                       marks.get("since"), running_only=ordered and not all_ and limit <= 0)
    return web.json_response(entries[:limit] if limit > 0 else entries)


async def inspect(request: web.Request) -> web.Response:
    record = await call(backend(request).containers.inspect(ContainerRef(id=request.match_info["id"])))
    return web.json_response(container_inspect(record))


async def restart(request: web.Request) -> web.Response:
    timeout = int_query(request, "t")
    await call(backend(request).ops.restart(StopRequest(id=request.match_info["id"], timeout=timeout or 0,
                                                        timeout_set=timeout is not None,
                                                        signal=request.query.get("signal", ""))))
    return web.Response(status=204)


async def pause(request: web.Request) -> web.Response:
    await call(backend(request).ops.pause(ContainerRef(id=request.match_info["id"])))
    return web.Response(status=204)


async def unpause(request: web.Request) -> web.Response:
    await call(backend(request).ops.unpause(ContainerRef(id=request.match_info["id"])))
    return web.Response(status=204)


async def top(request: web.Request) -> web.Response:
    reply = await call(backend(request).ops.top(TopRequest(id=request.match_info["id"],
                                                           ps_args=request.query.get("ps_args", ""))))
    return web.json_response({"Titles": list(reply.titles), "Processes": [list(r.cells) for r in reply.rows]})


async def rename(request: web.Request) -> web.Response:
    name = request.query.get("name", "")
    await call(backend(request).ops.rename(RenameRequest(id=request.match_info["id"], name=name)))
    return web.Response(status=204)


def _int(body: dict[str, Any], key: str) -> int:
    value = body.get(key) or 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"invalid {key}: expected an integer")
    return value


async def update(request: web.Request) -> web.Response:
    body = await json_body(request)
    policy = body.get("RestartPolicy") or {}
    if not isinstance(policy, dict):
        raise InvalidArgument("invalid RestartPolicy: expected an object")
    nano_cpus = _int(body, "NanoCpus")
    quota, period = _int(body, "CpuQuota"), _int(body, "CpuPeriod")
    if nano_cpus:
        period = period or 100_000
        quota = nano_cpus * period // 1_000_000_000
    reply = await call(backend(request).ops.update(UpdateContainerRequest(
        id=request.match_info["id"], memory=_int(body, "Memory"), pids_limit=_int(body, "PidsLimit"),
        cpu_quota=quota, cpu_period=period, cpu_shares=_int(body, "CpuShares"), nano_cpus=nano_cpus,
        restart_policy=str(policy.get("Name") or ""), restart_max_retries=_int(policy, "MaximumRetryCount"))))
    warnings = list(reply.warnings)
    if _int(body, "KernelMemory") > 0:  # accepted and not applied, as dockerd 20.10 warns
        warnings.append("Specifying a kernel memory limit is deprecated and will be removed in a future release.")
    return web.json_response({"Warnings": warnings})


async def stats(request: web.Request) -> web.StreamResponse:
    container = request.match_info["id"]
    stub = backend(request).ops
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


async def _next_sample(stub: ContainerOpsStub, container: str) -> StatsSample:
    await asyncio.sleep(STATS_INTERVAL)  # the sampling period itself, not a wait for a state
    return await call(stub.stats(ContainerRef(id=container)))


def _payload(entry: LogEntry, timestamps: bool, details: bool) -> bytes:
    # dockerd: the time, then (details) the entry's attributes and a space, then the line.
    data = b" " + entry.data if details else entry.data
    return (entry.time.encode() + b" " + data) if timestamps else data


async def logs(request: web.Request) -> web.StreamResponse:
    stdout, stderr = flag(request, "stdout"), flag(request, "stderr")
    if not (stdout or stderr):
        raise InvalidArgument("Bad parameters: you must choose at least one stream")
    tail_text = request.query.get("tail", "all")
    tail = -1 if tail_text in ("", "all") else int_query(request, "tail", -1)
    timestamps, details = flag(request, "timestamps"), flag(request, "details")
    since = since_ns(request.query.get("since"), "since") / 1e9
    until = since_ns(request.query.get("until"), "until") / 1e9
    containers = backend(request).containers
    record = await call(containers.inspect(ContainerRef(id=request.match_info["id"])))
    if record.config.host.log_driver == "none":
        # Before the headers go: the daemon says the same, but only once the stream has begun.
        raise NotSupported("configured logging driver does not support reading")
    tty = record.config.tty
    response = web.StreamResponse(status=200)
    response.content_type = RAW if tty else MULTIPLEXED
    await response.prepare(request)
    # Docker's --until: nothing written after it, and a follower stops there even when no entry comes.
    follow = flag(request, "follow")
    deadline = asyncio.timeout(max(0.0, until - time.time()) if until and follow else None)
    try:
        with client_errors(), contextlib.suppress(TimeoutError):
            async with deadline:
                async for entry in containers.logs(LogsRequest(
                        id=record.id, follow=follow, stdout=stdout, stderr=stderr,
                        tail=tail if tail is not None else -1, timestamps=timestamps)):
                    if since or until:
                        at = parse_time(entry.time)
                        if until and at > until:
                            break
                        if since and at < since:
                            continue
                    data = _payload(entry, timestamps, details)
                    try:
                        await response.write(data if tty else frame(entry.stream, data))
                    except ConnectionResetError:
                        # Caught here: client_errors would take it for the daemon's connection (Unavailable).
                        return response  # the client stopped reading (docker-py closes a stream it is done with)
        await response.write_eof()
    except ConnectionResetError:
        pass  # the client went away before the end: nothing to report
    return response


async def attach(request: web.Request) -> web.StreamResponse:
    """dockerd's attach: the logs first (``logs=1``, a stopped container's too), then, with ``stream=1``,
    the live output and the client's input (stdin alone too) until the container exits (a stopped one:
    after its next run, which ``docker start -a`` starts once attached), the client
    detaches (the detach keys, on a terminal) or, on a terminal or with no output asked for, its
    input ends."""
    containers = backend(request).containers
    stdin, stdout, stderr = flag(request, "stdin"), flag(request, "stdout"), flag(request, "stderr")
    detach_text = request.query.get("detachKeys", "")
    keys = stdin_pump.parse_detach_keys(detach_text) if detach_text else stdin_pump.DEFAULT_DETACH_KEYS
    logs = flag(request, "logs")
    live = None
    if flag(request, "stream", True):
        live = containers.attach(AttachRequest(id=request.match_info["id"], stdout=stdout,
                                               stderr=stderr)).__aiter__()
        with client_errors():
            # The daemon's first (empty) entry says it is following (a stopped container: through its next
            # run): only then may the client start the container. It also says what serving stdin needs
            # and the rest this answer needs: no inspect on docker run's path. Its refusals are the daemon's.
            info = (await live.__anext__()).attached
        container_id, tty = info.id, info.tty
    else:
        record = await call(containers.inspect(ContainerRef(id=request.match_info["id"])))
        check_attachable(request.match_info["id"], record.state.status)
        container_id, tty = record.id, record.config.tty
    # The input is taken before the answer goes (taken after, the first keys a client sent were lost).
    parser = stdin_pump.read_hijacked(request) if live is not None and stdin and info.open_stdin else None
    # The upgrade answer goes out at once: the CLI starts the container only once it is attached.
    response = await hijack(request, tty)
    if logs:
        await _attach_logs(response, containers, container_id, stdout, stderr, tty)
    if live is None or (parser is None and not (stdout or stderr)):
        # Nothing to stream (no stream asked for, or no output and no stdin to take): done, as dockerd.
        if live is not None:
            await live.aclose()  # type: ignore[attr-defined]
        await response.write_eof()
        return response
    # The client's input goes to the container's stdin, closed at its end with StdinOnce (not on a terminal).
    pump = stdin_pump.pump(parser, backend(request).ops, info.id, "", info.stdin_once and not tty,
                           keys if tty else None) if parser is not None else None

    async def outputs() -> AsyncIterator[tuple[LogStream, bytes]]:
        async for entry in live:
            yield entry.stream, entry.data

    try:
        with client_errors():
            await relay(response, outputs(), tty=tty, input_end=pump.ended if pump else None,
                                   end_on_input_end=tty or not (stdout or stderr))
    except SkiffError as exc:
        # Headers are gone: the error can only end the stream, as dockerd does.
        log.warning("attach ended", id=container_id, error=exc.message)
    except ConnectionResetError:
        pass  # the client went away; the container runs on
    finally:
        await stdin_pump.stop(pump)
    await response.write_eof()
    return response


async def _attach_logs(response: web.StreamResponse, containers: ContainersStub, container: str, stdout: bool,
                       stderr: bool, tty: bool) -> None:
    """What the container logged so far, as dockerd's attach with ``logs=1`` sends it (its error too)."""
    if not (stdout or stderr):
        return
    try:
        with client_errors():
            async for entry in containers.logs(LogsRequest(id=container, follow=False, stdout=stdout,
                                                           stderr=stderr, tail=-1)):
                await response.write(entry.data if tty else frame(entry.stream, entry.data))
    except SkiffError as exc:
        await response.write(f"Error attaching: {exc.message}\n".encode())


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
    routes.add("POST", "/containers/{id}/restart", restart)
    routes.add("POST", "/containers/{id}/pause", pause)
    routes.add("POST", "/containers/{id}/unpause", unpause)
    routes.add("GET", "/containers/{id}/top", top)
    routes.add("GET", "/containers/{id}/stats", stats)
    routes.add("POST", "/containers/{id}/rename", rename)
    routes.add("POST", "/containers/{id}/update", update)
