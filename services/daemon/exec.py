"""Docker's execs over highlevel's: records in memory (as dockerd keeps them), output streamed, exit watched.

An exec's output is not in the container's log: the shim keeps what an exec printed before anyone attached
for its first attacher, so Start runs the process first and attaches after, and nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from services.common.errors import Conflict, InvalidArgument, NotFound, SkiffError
from services.common.grpc import call, client_errors
from services.daemon.containers import ContainerManager, Entry
from services.daemon.spec import merge_env
from services.gen.skiff import highlevel
from services.gen.skiff.daemon.v1 import ExecCreateRequest, ExecInfo, ExecOutput, LogStream, State

hl = highlevel.v1
log = structlog.get_logger(service="daemon")
# How long a finished exec's highlevel process waits for its attacher to drain before it is deleted.
DRAIN_GRACE = 30.0
STREAMS = {hl.Stream.STDOUT: LogStream.STDOUT, hl.Stream.STDERR: LogStream.STDERR}
EventSink = Callable[[str, Entry, dict[str, str]], None]


@dataclass(slots=True)
class ExecRecord:
    id: str
    container_id: str
    request: ExecCreateRequest
    started: bool = False
    running: bool = False
    pid: int = 0
    exit_code: int | None = None
    drained: asyncio.Event = field(default_factory=asyncio.Event)
    watcher: asyncio.Task[None] | None = None

    @property
    def task_exec_id(self) -> str:
        # The shim's console socket path holds the exec id and must stay under 108 bytes: 12 hex suffice.
        return self.id[:12]

    def info(self) -> ExecInfo:
        r = self.request
        return ExecInfo(id=self.id, container_id=self.container_id, running=self.running,
                        exit_code=self.exit_code or 0, exited=self.exit_code is not None, pid=self.pid,
                        cmd=list(r.cmd), tty=r.tty, open_stdin=r.attach_stdin, open_stdout=r.attach_stdout,
                        open_stderr=r.attach_stderr, user=r.user, privileged=r.privileged,
                        working_dir=r.working_dir)


def process_spec(bundle: str, request: ExecCreateRequest) -> dict[str, Any]:
    """The container's own process spec (env, caps, rlimits) with the exec's argv, tty, env, cwd, user."""
    config = json.loads((Path(bundle) / "config.json").read_text())
    process: dict[str, Any] = dict(config["process"])
    process["args"] = list(request.cmd)
    process["terminal"] = request.tty
    process.pop("consoleSize", None)
    process["env"] = merge_env(list(process.get("env") or []), list(request.env))
    if request.working_dir:
        process["cwd"] = request.working_dir
    if request.user:
        uid, _, gid = request.user.partition(":")
        if not uid.isdigit() or (gid and not gid.isdigit()):
            # Names need the container's /etc/passwd; numeric ids are what busybox images use.
            raise InvalidArgument(f"exec user must be numeric uid[:gid], got {request.user!r}")
        process["user"] = {"uid": int(uid), "gid": int(gid or 0)}
    return process


def _command(request: ExecCreateRequest) -> str:
    """Docker names exec events with the command: "exec_start: sh -c date"."""
    return " ".join(request.cmd)


class ExecManager:
    def __init__(self, containers: ContainerManager) -> None:
        self.containers = containers
        self.tasks = containers.tasks
        self.execs: dict[str, ExecRecord] = {}
        self.sinks: list[EventSink] = []

    def _emit(self, action: str, entry: Entry, attrs: dict[str, str]) -> None:
        for sink in self.sinks:
            sink(action, entry, attrs)

    def get(self, exec_id: str) -> ExecRecord:
        record = self.execs.get(exec_id)
        if record is None:
            raise NotFound(f"No such exec instance: {exec_id}")
        return record

    def _running_entry(self, container_id: str) -> Entry:
        entry = self.containers.get(container_id)
        if entry.record.state.status == State.PAUSED:
            raise Conflict(f"Container {entry.record.id} is paused, unpause the container before exec")
        if not entry.running:
            raise Conflict(f"Container {entry.record.id} is not running")
        return entry

    async def create(self, request: ExecCreateRequest) -> str:
        if not request.cmd:
            raise InvalidArgument("No exec command specified")
        entry = self._running_entry(request.container)
        exec_id = secrets.token_hex(32)
        spec = await asyncio.to_thread(process_spec, entry.record.bundle, request)
        await call(self.tasks.exec(hl.ExecRequest(
            id=entry.record.id, exec_id=exec_id[:12], process=json.dumps(spec).encode(), terminal=request.tty,
            stdin=request.attach_stdin, stdin_once=True)))
        request.container = entry.record.id
        self.execs[exec_id] = ExecRecord(exec_id, entry.record.id, request)
        self._emit(f"exec_create: {_command(request)}", entry, {"execID": exec_id, "exec_id": exec_id})
        return exec_id

    async def start(self, exec_id: str, detach: bool) -> AsyncIterator[ExecOutput]:
        record = self.get(exec_id)
        if record.started:
            raise Conflict(f"Error: Exec command {exec_id} has already run")
        entry = self._running_entry(record.container_id)
        record.started = True
        try:
            started = await call(self.tasks.start(hl.StartRequest(id=record.container_id,
                                                                  exec_id=record.task_exec_id)))
        except SkiffError:
            record.exit_code = 126
            with contextlib.suppress(SkiffError):
                await call(self.tasks.delete(hl.DeleteTaskRequest(
                    id=record.container_id, exec_id=record.task_exec_id, force=True)))
            raise
        record.pid, record.running = started.pid, True
        record.watcher = asyncio.ensure_future(self._watch(record, entry))
        self._emit(f"exec_start: {_command(record.request)}", entry, {"execID": exec_id, "exec_id": exec_id})
        yield ExecOutput(started=True)
        if detach:
            record.drained.set()
            return
        try:
            r = record.request
            with client_errors():
                async for out in self.tasks.attach(hl.AttachRequest(
                        id=record.container_id, exec_id=record.task_exec_id,
                        stdout=r.attach_stdout or not r.attach_stderr, stderr=r.attach_stderr or not r.attach_stdout)):
                    if out.eof:
                        yield ExecOutput(eof=True, exit_code=out.exit.exit_code)
                        return
                    yield ExecOutput(stream=STREAMS.get(out.stream, LogStream.STDOUT), data=out.data)
        finally:
            record.drained.set()

    async def _watch(self, record: ExecRecord, entry: Entry) -> None:
        """Records the exit, then lets highlevel forget the process once its output is drained."""
        code = 255
        try:
            with client_errors():
                wait = self.tasks.wait(hl.WaitRequest(id=record.container_id, exec_id=record.task_exec_id))
                async for message in wait:
                    if message.exited:
                        code = message.exit.exit_code
        except SkiffError as exc:
            log.warning("exec wait failed", exec_id=record.id, error=exc.message)
        record.exit_code, record.running = code, False
        self._emit(f"exec_die: {_command(record.request)}", entry,
                   {"execID": record.id, "exec_id": record.id, "exitCode": str(code)})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(record.drained.wait(), DRAIN_GRACE)
        with contextlib.suppress(SkiffError):
            await call(self.tasks.delete(hl.DeleteTaskRequest(id=record.container_id,
                                                              exec_id=record.task_exec_id, force=True)))

    async def resize(self, exec_id: str, width: int, height: int) -> None:
        record = self.get(exec_id)
        if not record.running:
            raise Conflict(f"Exec {exec_id} is not running")
        await call(self.tasks.resize_pty(hl.ResizePtyRequest(
            id=record.container_id, exec_id=record.task_exec_id, width=width, height=height)))

    def forget_container(self, container_id: str) -> None:
        """A removed container's execs go with it (dockerd does the same)."""
        for exec_id in [k for k, v in self.execs.items() if v.container_id == container_id]:
            record = self.execs.pop(exec_id)
            if record.watcher is not None:
                record.watcher.cancel()

    async def close(self) -> None:
        for record in self.execs.values():
            if record.watcher is not None:
                record.watcher.cancel()
