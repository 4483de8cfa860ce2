"""Exec endpoints: create, start (hijacked or detached), resize, inspect; and container resize."""

from __future__ import annotations

import structlog
from aiohttp import web

from services.apiserver import stdin as stdin_pump
from services.apiserver.app import Routes, backend
from services.apiserver.params import json_body
from services.apiserver.streams import frame, hijack
from services.common.errors import InvalidArgument, SkiffError
from services.common.grpc import call, client_errors
from services.dockermodel.fields import string_list
from services.gen.skiff.daemon.v1 import (
    ExecCreateRequest,
    ExecInfo,
    ExecRef,
    ExecStartRequest,
    ResizeRequest,
)

log = structlog.get_logger(service="apiserver")


async def create(request: web.Request) -> web.Response:
    body = await json_body(request)
    reply = await call(backend(request).execs.create(ExecCreateRequest(
        container=request.match_info["id"], cmd=string_list(body.get("Cmd"), "Cmd"),
        env=string_list(body.get("Env"), "Env"), user=str(body.get("User") or ""),
        working_dir=str(body.get("WorkingDir") or ""), tty=bool(body.get("Tty")),
        attach_stdin=bool(body.get("AttachStdin")), attach_stdout=bool(body.get("AttachStdout")),
        attach_stderr=bool(body.get("AttachStderr")), privileged=bool(body.get("Privileged")))))
    return web.json_response({"Id": reply.id}, status=201)


async def start(request: web.Request) -> web.StreamResponse:
    body = await json_body(request)
    exec_id = request.match_info["id"]
    info: ExecInfo = await call(backend(request).execs.inspect(ExecRef(id=exec_id)))
    detach = bool(body.get("Detach"))
    tty = bool(body.get("Tty", info.tty)) or info.tty
    stream = backend(request).execs.start(ExecStartRequest(id=exec_id, detach=detach)).__aiter__()
    with client_errors():
        await stream.__anext__()  # started: errors (not running, already started) still get their status
    if detach:
        return web.Response(status=200)
    response = await hijack(request, tty)
    pump = stdin_pump.pump(request, backend(request).ops, info.container_id, exec_id, True) if info.open_stdin else None
    try:
        with client_errors():
            async for out in stream:
                if out.eof:
                    break
                await response.write(out.data if tty else frame(out.stream, out.data))
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
        "CanRemove": False, "DetachKeys": "",
        "ProcessConfig": {"tty": info.tty, "entrypoint": info.cmd[0] if info.cmd else "",
                          "arguments": list(info.cmd[1:]), "privileged": info.privileged, "user": info.user},
    })


def register(routes: Routes) -> None:
    routes.add("POST", "/containers/{id}/exec", create)
    routes.add("POST", "/exec/{id}/start", start)
    routes.add("POST", "/exec/{id}/resize", resize)
    routes.add("GET", "/exec/{id}/json", inspect)
    routes.add("POST", "/containers/{id}/resize", container_resize)
