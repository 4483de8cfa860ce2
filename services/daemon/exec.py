"""Docker's execs over highlevel's: records kept on disk, output streamed, exit watched.

An exec's output is not in the container's log: the shim keeps what an exec printed before anyone attached
for its first attacher, so Start runs the process first and attaches after, and nothing is lost. The
process is made at start, as dockerd makes it (its user resolved in the container's /etc/passwd then);
a start that fails is an exec that ran with exit code 126, its error on the stream.

Each record is written atomically to ``<lib>/daemon/execs/<id>.json`` when it is created, started and
when it exits, and goes with its container. At start the daemon reloads them and asks highlevel (whose
shim recorded the exit) what became of the ones that were running: an exec that ended while the daemon
was down reports its true exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from services.common.atomic import atomic_write
from services.common.errors import Conflict, InvalidArgument, NotFound, SkiffError
from services.common.grpc import call, client_errors, grpc_errors
from services.daemon.containers import ContainerManager, EventSink
from services.daemon.records import Entry
from services.daemon.spec import build_process, merge_env, resolve_user
from services.gen.skiff import highlevel
from services.gen.skiff.daemon.v1 import (
    Container,
    Empty,
    ExecCreateRequest,
    ExecCreateResponse,
    ExecInfo,
    ExecOutput,
    ExecRef,
    ExecsBase,
    ExecStartRequest,
    LogStream,
    ResizeRequest,
    State,
)

hl = highlevel.v1
log = structlog.get_logger(service="daemon")
# How long a finished exec's highlevel process waits for its attacher to drain before it is deleted.
DRAIN_GRACE = 30.0
STREAMS = {hl.Stream.STDOUT: LogStream.STDOUT, hl.Stream.STDERR: LogStream.STDERR}


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
    # Saves of one record go one at a time, each writing its latest state; none after it is forgotten.
    save_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # The exit is recorded (and told) once, by the attach's end or the wait, whichever comes first;
    # the other waits until it is told, so a client's next request sees the exec_die before its own events.
    exit_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    forgotten: bool = False

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
                        working_dir=r.working_dir, detach_keys=r.detach_keys)

    def to_json(self) -> bytes:
        return json.dumps({
            "id": self.id, "container_id": self.container_id, "request": self.request.to_dict(),
            "started": self.started, "running": self.running, "pid": self.pid, "exit_code": self.exit_code,
        }).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> ExecRecord:
        doc = json.loads(raw)
        code = doc.get("exit_code")
        return cls(str(doc["id"]), str(doc["container_id"]), ExecCreateRequest().from_dict(doc.get("request") or {}),
                   started=bool(doc.get("started")), running=bool(doc.get("running")), pid=int(doc.get("pid") or 0),
                   exit_code=None if code is None else int(code))


class ExecStore:
    """Exec records on disk, one file each, written atomically. Blocking: called through ``to_thread``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def save(self, exec_id: str, data: bytes) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write(self.root / f"{exec_id}.json", data)

    def load_all(self) -> list[ExecRecord]:
        records: list[ExecRecord] = []
        if not self.root.is_dir():
            return records
        for path in self.root.glob("*.json"):
            try:
                records.append(ExecRecord.from_json(path.read_bytes()))
            except FileNotFoundError:
                continue
            except (ValueError, KeyError, TypeError) as exc:
                # Cannot happen with atomic writes; a foreign or damaged file is set aside, not fatal.
                log.warning("exec record unreadable, removed", path=str(path), error=str(exc))
                self.delete(path.stem)
        return records

    def delete(self, exec_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.root / f"{exec_id}.json")


def process_spec(record: Container, image_config: dict[str, Any], request: ExecCreateRequest) -> dict[str, Any]:
    """The container's own process spec (env, caps, rlimits) with the exec's argv, tty, env, cwd, user
    (blocking: users are looked up in the rootfs, as at the container's start; call in a thread)."""
    rootfs = Path(record.rootfs)
    process = build_process(record.id, image_config, record.config, rootfs)
    process["args"] = list(request.cmd)
    process["terminal"] = request.tty
    process.pop("consoleSize", None)
    process["env"] = merge_env(list(process.get("env") or []), list(request.env))
    if request.working_dir:
        process["cwd"] = request.working_dir
    if request.user:
        process["user"] = exec_user(rootfs, request.user)
    return process


def exec_user(rootfs: Path, user: str) -> dict[str, Any]:
    """``name``, ``uid``, ``name:group`` or ``uid:gid`` from the container's /etc/passwd and /etc/group,
    as dockerd resolves an exec's user: without an explicit group, the groups listing the user as a
    member are its additional ones."""
    resolved = resolve_user(rootfs, user)
    name, _, group = user.partition(":")
    if group:
        return resolved
    if name.isdigit():
        name = next((fields[0] for fields in _entries(rootfs / "etc" / "passwd", 3) if fields[2] == name), "")
    if name:
        extra = [int(fields[2]) for fields in _entries(rootfs / "etc" / "group", 4)
                 if fields[2].isdigit() and name in fields[3].split(",")]
        if extra:
            resolved["additionalGids"] = extra
    return resolved


def _entries(path: Path, fields: int) -> list[list[str]]:
    """The colon-separated lines of a passwd or group file with at least ``fields`` fields."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    return [parts for parts in (line.split(":") for line in lines) if len(parts) >= fields]


def oci_exec_failure(exc: SkiffError) -> str:
    """What dockerd 20.10 writes on the stream when runc could not start an exec's process."""
    return f"OCI runtime exec failed: exec failed: unable to start container process: {exc.message}: unknown"


def _command(request: ExecCreateRequest) -> str:
    """Docker names exec events with the command: "exec_start: sh -c date"."""
    return " ".join(request.cmd)


class ExecManager:
    def __init__(self, containers: ContainerManager, folder: Path) -> None:
        self.containers = containers
        self.tasks = containers.tasks
        self.execs: dict[str, ExecRecord] = {}
        self.sinks: list[EventSink] = []
        self.store = ExecStore(folder)
        self.background: set[asyncio.Task[None]] = set()

    def subscribe(self, sink: EventSink) -> None:
        """``sink`` hears every exec event (exec_create, exec_start, exec_die) from now on."""
        self.sinks.append(sink)

    def on_container_event(self, action: str, entry: Entry, attrs: dict[str, str]) -> None:
        if action == "destroy":
            self.forget_container(entry.record.id)

    def _spawn(self, coro: object) -> None:
        task = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def _save(self, record: ExecRecord) -> None:
        async with record.save_lock:
            if not record.forgotten:
                await asyncio.to_thread(self.store.save, record.id, record.to_json())

    async def _delete(self, record: ExecRecord) -> None:
        async with record.save_lock:
            await asyncio.to_thread(self.store.delete, record.id)

    async def restore(self) -> None:
        """At daemon start (before container exits are watched): reload the records, and learn from
        highlevel what became of the execs that were running while the daemon was down."""
        for record in await asyncio.to_thread(self.store.load_all):
            entry = self.containers.entries.get(record.container_id)
            if entry is None:
                await asyncio.to_thread(self.store.delete, record.id)  # its container went
                continue
            self.execs[record.id] = record
            # No attacher survives a daemon restart: nothing waits for one to drain.
            record.drained.set()
            if record.running:
                await self._reconcile(record, entry)
        log.info("execs restored", execs=len(self.execs))

    async def _reconcile(self, record: ExecRecord, entry: Entry) -> None:
        try:
            state = await call(self.tasks.state(hl.StateRequest(id=record.container_id,
                                                                exec_id=record.task_exec_id)))
        except NotFound:
            # highlevel no longer knows the process (it or its container's task went): its end is unknown.
            log.warning("exec lost while the daemon was down", exec_id=record.id)
            await self._exited(record, entry, 255)
            return
        if state.status == hl.TaskStatus.STOPPED:
            await self._exited(record, entry, state.exit.exit_code if state.exit else 255)
            await self._forget_task(record)
        else:
            record.watcher = asyncio.ensure_future(self._watch(record, entry))

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
        """Records the exec; its process is made at start (dockerd resolves its user there too)."""
        if not request.cmd:
            raise InvalidArgument("No exec command specified")
        entry = self._running_entry(request.container)
        exec_id = secrets.token_hex(32)
        request.container = entry.record.id
        record = ExecRecord(exec_id, entry.record.id, request)
        self.execs[exec_id] = record
        await self._save(record)
        self._emit(f"exec_create: {_command(request)}", entry, {"execID": exec_id, "exec_id": exec_id})
        return exec_id

    async def start(self, exec_id: str, detach: bool, failure_as_output: bool = False) -> AsyncIterator[ExecOutput]:
        """Accepted (started), then running and the output unless detached, then eof with the exit code.
        A process that cannot start is an exec that ran with exit code 126; ``failure_as_output`` (a
        client's attached start, as dockerd writes it) gives its error as output, else it is raised."""
        record = self.get(exec_id)
        if record.running:
            raise Conflict(f"Error: Exec command {exec_id} is already running")
        if record.started:
            raise Conflict(f"Error: Exec command {exec_id} has already run")
        entry = self._running_entry(record.container_id)
        record.started = True
        # Accepted: the apiserver answers 101 now and the process starts after, as with dockerd (a
        # client reading the answer's headers then never finds output mixed into them).
        yield ExecOutput(started=True)
        try:
            started = await self._launch(record, entry)
        except SkiffError as exc:
            # dockerd: the start's error on the stream (a detached start's error is its answer) and
            # exit code 126, whatever the cause.
            await self._exited(record, entry, 126, announce=False)
            await self._forget_task(record)
            if detach or not failure_as_output:
                raise
            yield ExecOutput(stream=LogStream.STDOUT, data=exc.message.encode() + b"\r\n")
            yield ExecOutput(eof=True, exit_code=126)
            return
        record.pid, record.running = started.pid, True
        await self._save(record)
        record.watcher = asyncio.ensure_future(self._watch(record, entry))
        self._emit(f"exec_start: {_command(record.request)}", entry, {"execID": exec_id, "exec_id": exec_id})
        yield ExecOutput(running=True)
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
                        # The exit is recorded before the stream ends: an inspect right after sees it.
                        await self._exited(record, entry, out.exit.exit_code)
                        yield ExecOutput(eof=True, exit_code=out.exit.exit_code)
                        return
                    yield ExecOutput(stream=STREAMS.get(out.stream, LogStream.STDOUT), data=out.data)
        finally:
            record.drained.set()

    async def _launch(self, record: ExecRecord, entry: Entry) -> hl.StartResponse:
        """The process made (spec, highlevel's exec) and started; the runtime's refusal in dockerd's words."""
        request = record.request
        image_config = await self.containers.image_config(entry.record)
        spec = await asyncio.to_thread(process_spec, entry.record, image_config, request)
        await call(self.tasks.exec(hl.ExecRequest(
            id=entry.record.id, exec_id=record.task_exec_id, process=json.dumps(spec).encode(), terminal=request.tty,
            stdin=request.attach_stdin, stdin_once=True)))
        try:
            return await call(self.tasks.start(hl.StartRequest(id=record.container_id, exec_id=record.task_exec_id)))
        except SkiffError as exc:
            raise type(exc)(oci_exec_failure(exc)) from exc

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
        await self._exited(record, entry, code)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(record.drained.wait(), DRAIN_GRACE)
        await self._forget_task(record)

    async def _exited(self, record: ExecRecord, entry: Entry, code: int, announce: bool = True) -> None:
        """The exit is on disk before it is told (a daemon killed now still reports it after restart).
        Once: the attach's end and the wait both report it."""
        async with record.exit_lock:
            if record.exit_code is not None and not record.running:
                return
            record.exit_code, record.running = code, False
            await self._save(record)
            if announce:
                self._emit(f"exec_die: {_command(record.request)}", entry,
                           {"execID": record.id, "exec_id": record.id, "exitCode": str(code)})

    async def _forget_task(self, record: ExecRecord) -> None:
        """highlevel (and the shim) may let the finished process go: its exit is in the record."""
        with contextlib.suppress(SkiffError):
            await call(self.tasks.delete(hl.DeleteTaskRequest(id=record.container_id,
                                                              exec_id=record.task_exec_id, force=True)))

    async def resize(self, exec_id: str, width: int, height: int) -> None:
        record = self.get(exec_id)
        if not record.running:
            raise Conflict(f"Exec {exec_id} is not running")
        await call(self.tasks.resize_pty(hl.ResizePtyRequest(
            id=record.container_id, exec_id=record.task_exec_id, width=width, height=height)))

    def forget(self, exec_id: str) -> None:
        """An exec nobody inspects (a health probe's) leaves no record; highlevel lets it go once it ended."""
        record = self.execs.pop(exec_id, None)
        if record is not None:
            record.forgotten = True
            self._spawn(self._delete(record))

    def forget_container(self, container_id: str) -> None:
        """A removed container's execs go with it (dockerd does the same)."""
        for exec_id in [k for k, v in self.execs.items() if v.container_id == container_id]:
            record = self.execs.pop(exec_id)
            record.forgotten = True
            if record.watcher is not None:
                record.watcher.cancel()
            self._spawn(self._delete(record))

    async def close(self) -> None:
        for record in self.execs.values():
            if record.watcher is not None:
                record.watcher.cancel()
        for task in list(self.background):
            task.cancel()


class ExecsService(ExecsBase):
    def __init__(self, execs: ExecManager) -> None:
        self.execs = execs

    @grpc_errors
    async def create(self, exec_create_request: ExecCreateRequest) -> ExecCreateResponse:
        return ExecCreateResponse(id=await self.execs.create(exec_create_request))

    @grpc_errors
    async def start(self, exec_start_request: ExecStartRequest) -> AsyncIterator[ExecOutput]:
        async for out in self.execs.start(exec_start_request.id, exec_start_request.detach, failure_as_output=True):
            yield out

    @grpc_errors
    async def inspect(self, exec_ref: ExecRef) -> ExecInfo:
        return self.execs.get(exec_ref.id).info()

    @grpc_errors
    async def resize(self, resize_request: ResizeRequest) -> Empty:
        r = resize_request
        await self.execs.resize(r.id, r.width, r.height)
        return Empty()
