"""Exec endpoints: create, start (hijacked or detached), resize, inspect; and container resize."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any

import structlog
from aiohttp import web

from services.apiserver import stdin as stdin_pump
from services.apiserver.app import Routes, backend
from services.apiserver.params import json_body
from services.apiserver.streams import hijack, relay
from services.common.errors import InvalidArgument, SkiffError
from services.common.grpc import call, client_errors
from services.dockermodel.fields import string_list
from services.gen.skiff.daemon.v1 import (
    ExecCreateRequest,
    ExecInfo,
    ExecRef,
    ExecStartRequest,
    LogStream,
    ResizeRequest,
)

log = structlog.get_logger(service="apiserver")


def _field(body: dict[str, Any], name: str) -> Any:
    """A body key as Go's JSON decoding finds it: the exact name, else any spelling of it
    (docker-py sends the exec's detach keys as ``detachKeys``)."""
    if name in body:
        return body[name]
    lowered = name.lower()
    return next((value for key, value in body.items() if key.lower() == lowered), None)


async def create(request: web.Request) -> web.Response:
    body = await json_body(request)
    detach_keys = str(_field(body, "DetachKeys") or "")
    if detach_keys:
        stdin_pump.parse_detach_keys(detach_keys, "escape keys")
    reply = await call(backend(request).execs.create(ExecCreateRequest(
        container=request.match_info["id"], cmd=string_list(_field(body, "Cmd"), "Cmd"),
        env=string_list(_field(body, "Env"), "Env"), user=str(_field(body, "User") or ""),
        working_dir=str(_field(body, "WorkingDir") or ""), tty=bool(_field(body, "Tty")),
        attach_stdin=bool(_field(body, "AttachStdin")), attach_stdout=bool(_field(body, "AttachStdout")),
        attach_stderr=bool(_field(body, "AttachStderr")), privileged=bool(_field(body, "Privileged")),
        detach_keys=detach_keys)))
    return web.json_response({"Id": reply.id}, status=201)


async def start(request: web.Request) -> web.StreamResponse:
    body = await json_body(request)
    exec_id = request.match_info["id"]
    info: ExecInfo = await call(backend(request).execs.inspect(ExecRef(id=exec_id)))
    detach = bool(_field(body, "Detach"))
    stream = backend(request).execs.start(ExecStartRequest(id=exec_id, detach=detach)).__aiter__()
    with client_errors():
        await stream.__anext__()  # accepted: errors (not running, already started) still get their status
        if detach:
            async for _ in stream:
                pass  # a detached start's failure is its answer
            return web.Response(status=200)
    # dockerd frames the output by the start's Tty, not the exec's (docker-py sends Tty false unless told).
    tty = bool(_field(body, "Tty"))
    # The input is taken before the answer goes (taken after, the first keys a client sent were lost).
    parser = stdin_pump.read_hijacked(request) if info.open_stdin else None
    response = await hijack(request, tty)
    pump: stdin_pump.Pump | None = None
    input_end: asyncio.Future[str] | None = asyncio.get_running_loop().create_future() if parser else None

    def forward_input() -> None:
        """The process exists now: its stdin can be written. A terminal's stdin stays open at the input's
        end (dockerd closes it only without a tty) and is watched for the detach keys."""
        nonlocal pump
        assert parser is not None and input_end is not None
        keys = stdin_pump.parse_detach_keys(info.detach_keys) if info.detach_keys else stdin_pump.DEFAULT_DETACH_KEYS
        pump = stdin_pump.pump(parser, backend(request).ops, info.container_id, exec_id,
                               close_on_end=not info.tty, detach_keys=keys if info.tty else None)
        pump.ended.add_done_callback(lambda ended: input_end.done() or input_end.set_result(ended.result()))

    async def outputs() -> AsyncIterator[tuple[LogStream, bytes]]:
        async for out in stream:
            if out.eof:
                return
            if out.running:
                if parser is not None:
                    forward_input()
                continue
            if tty and out.stream == LogStream.STDERR and not info.tty:
                continue  # dockerd gives a raw start no stderr writer: a pipe's stderr is not shown
            yield out.stream, out.data

    try:
        with client_errors():
            await relay(response, outputs(), tty=tty, input_end=input_end, end_on_input_end=info.tty)
    except SkiffError as exc:
        log.warning("exec stream ended", exec_id=exec_id, error=exc.message)
    except ConnectionResetError:
        pass  # the client went away; the process runs on, as with dockerd
    finally:
        await stdin_pump.stop(pump)
    await response.write_eof()
    return response


def _size(request: web.Request) -> tuple[int, int]:
    try:
        return int(request.query.get("w", "0")), int(request.query.get("h", "0"))
    except ValueError:
        raise InvalidArgument("invalid resize: h and w must be integers") from None


async def resize(request: web.Request) -> web.Response:
    width, height = _size(request)
    await call(backend(request).execs.resize(ResizeRequest(id=request.match_info["id"], width=width, height=height)))
    return web.Response(status=200)


async def container_resize(request: web.Request) -> web.Response:
    width, height = _size(request)
    await call(backend(request).ops.resize(ResizeRequest(id=request.match_info["id"], width=width, height=height)))
    return web.Response(status=200)


async def inspect(request: web.Request) -> web.Response:
    info = await call(backend(request).execs.inspect(ExecRef(id=request.match_info["id"])))
    return web.json_response({
        "ID": info.id, "ContainerID": info.container_id, "Running": info.running,
        "ExitCode": info.exit_code if info.exited else None, "Pid": info.pid,
        "OpenStdin": info.open_stdin, "OpenStdout": info.open_stdout, "OpenStderr": info.open_stderr,
        "CanRemove": False,
        # dockerd keeps the parsed keys as bytes, which Go's JSON writes in base64 ("EBE=" for ctrl-p,ctrl-q).
        "DetachKeys": base64.b64encode(stdin_pump.parse_detach_keys(info.detach_keys)).decode()
        if info.detach_keys else "",
        "ProcessConfig": {"tty": info.tty, "entrypoint": info.cmd[0] if info.cmd else "",
                          "arguments": list(info.cmd[1:]), "privileged": info.privileged, "user": info.user},
    })


def register(routes: Routes) -> None:
    routes.add("POST", "/containers/{id}/exec", create)
    routes.add("POST", "/exec/{id}/start", start)
    routes.add("POST", "/exec/{id}/resize", resize)
    routes.add("GET", "/exec/{id}/json", inspect)
    routes.add("POST", "/containers/{id}/resize", container_resize)
