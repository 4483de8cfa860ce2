"""Tasks: one shim per container, spawned detached, found again from ``<run>/highlevel/`` on restart.

Every runtime command goes through the task's shim (services/common/shimproto.py); highlevel runs
the runtime itself only for ``delete --force`` when no shim can. Shims are launched by
shim_launcher.py (the zygote).

Layout under ``<run>/highlevel/``:
  ``t/<id>/``            the shim's state folder (bootstrap.json, status.json, shim.pid, init.pid)
  ``s/<12 hex>.sock``    the shim's socket (short: UNIX socket paths stop at 107 bytes)
  ``runtime-state/``     the OCI runtime's ``--root``
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import json
import os
import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from services.common.atomic import atomic_write
from services.common.config import resolve_runtime
from services.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    SkiffError,
)
from services.common.paths import Paths
from services.common.shimproto import FrameKind, Op, rfc3339_nano
from services.gen.skiff.highlevel.v1 import EventType, ExitStatus
from services.highlevel import cgroup_warm, shim_process
from services.highlevel.bundles import check_id
from services.highlevel.events import EventBus
from services.highlevel.shim_client import ShimClient, ShimGone, shim_error
from services.highlevel.shim_launcher import ShimLauncher, read_int

log = structlog.get_logger(service="highlevel")

RUNTIME_TIMEOUT = 30.0
SHIM_EXIT_TIMEOUT = 5.0
DEFAULT_NAMESPACE = "moby"  # the Docker daemon's; a request's empty namespace means it


class TaskStatus(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"


@dataclass(slots=True)
class ExitInfo:
    exit_code: int
    signal: int = 0
    oom_killed: bool = False
    exited_at: str = ""
    oom_kills: int = 0  # the cgroup's oom_kill counter at the exit (not in the proto): dedupes the oom event

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ExitInfo:
        return cls(int(raw.get("exit_code", 0)), int(raw.get("signal", 0)), bool(raw.get("oom_killed")),
                   str(raw.get("exited_at", "")), int(raw.get("oom_kill") or 0))

    def to_proto(self) -> ExitStatus:
        return ExitStatus(exit_code=self.exit_code, signal=self.signal, oom_killed=self.oom_killed,
                          exited_at=self.exited_at)


@dataclass(slots=True)
class ProcRecord:
    """What highlevel knows of one process (init or exec) without asking the shim."""

    exec_id: str
    pid: int = 0
    terminal: bool = False
    exit: ExitInfo | None = None
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    starting: bool = False
    watcher: asyncio.Task[None] | None = None


@dataclass(slots=True)
class Task:
    id: str
    state_dir: Path
    socket: str
    runtime: str
    runtime_argv: list[str]
    bundle: str
    shim_pid: int
    init: ProcRecord
    execs: dict[str, ProcRecord] = field(default_factory=dict)
    paused: bool = False
    dead: bool = False  # the shim is gone: the task can only be deleted
    started_at: str = ""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    oom_kills: int = 0  # the highest oom_kill count already published as an ``oom`` event
    oom_watcher: asyncio.Task[None] | None = None
    namespace: str = DEFAULT_NAMESPACE  # as containerd's: the daemon's tasks and CRI's see none of the other's

    @property
    def client(self) -> ShimClient:
        return ShimClient(self.socket)

    def proc(self, exec_id: str) -> ProcRecord:
        if not exec_id:
            return self.init
        record = self.execs.get(exec_id)
        if record is None:
            raise NotFound(f"exec `{exec_id}` of container {self.id}: not found")
        return record


@dataclass(frozen=True, slots=True)
class CreateOptions:
    id: str
    bundle: str
    runtime: str = ""
    terminal: bool = False
    stdin: bool = False
    stdin_once: bool = False
    log_path: str = ""
    log_max_size: int = 0
    log_max_file: int = 1
    log_format: str = ""  # "json-file" (""), "local"
    log_compress: bool = False
    log_attrs: dict[str, str] | None = None
    namespace: str = DEFAULT_NAMESPACE
    start: bool = False  # the init started too, by the shim before it answers (Tasks.Create's start)
    release_on_exit: bool = False  # the runtime's state deleted by the shim once the exit is told


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class TaskManager:
    def __init__(self, paths: Paths, default_runtime: str, events: EventBus) -> None:
        self.paths = paths
        self.default_runtime = default_runtime
        self.events = events
        self.tasks: dict[str, Task] = {}
        self.task_dirs = paths.highlevel_run / "t"
        self.socket_dir = paths.highlevel_run / "s"
        self.runtime_root = paths.highlevel_run / "runtime-state"
        for folder in (self.task_dirs, self.socket_dir, self.runtime_root):
            folder.mkdir(parents=True, exist_ok=True)
        self._creating: set[str] = set()
        self._exiting: set[asyncio.Future[None]] = set()  # shims answered their delete, not yet gone
        self.launcher = ShimLauncher(paths.highlevel_run)

    # ---- helpers ----------------------------------------------------------------------------

    def get(self, id_: str) -> Task:
        task = self.tasks.get(id_)
        if task is None:
            raise NotFound(f"task {id_}: not found")
        return task

    def socket_path(self, id_: str) -> str:
        return str(self.socket_dir / (hashlib.sha256(id_.encode()).hexdigest()[:12] + ".sock"))

    async def force_delete(self, runtime_argv: list[str], id_: str) -> None:
        """``<runtime> delete --force ID`` when no shim can: after a shim died, or a failed create.

        The only runtime command highlevel runs itself; its failure (nothing left to delete) is ignored.
        """
        with contextlib.suppress(OSError):
            proc = await asyncio.create_subprocess_exec(
                *runtime_argv, "--root", str(self.runtime_root), "delete", "--force", id_,
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL)
            try:
                await asyncio.wait_for(proc.wait(), RUNTIME_TIMEOUT)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                log.warning("runtime delete --force: no answer", id=id_, timeout=RUNTIME_TIMEOUT)

    def _remove_traces(self, id_: str, state_dir: Path) -> None:
        shutil.rmtree(state_dir, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path(id_))

    # ---- create / start ---------------------------------------------------------------------

    async def create(self, opts: CreateOptions) -> Task:
        cgroup_warm.warm()  # the runtime's cgroup move, ~25 ms from now, then waits for nothing
        check_id(opts.id)
        if opts.id in self.tasks or opts.id in self._creating:
            raise AlreadyExists(f"task {opts.id} already exists")
        bundle = Path(opts.bundle)
        if not bundle.is_absolute() or not (bundle / "config.json").is_file():
            raise InvalidArgument(f"bundle `{opts.bundle}`: no config.json there (an absolute path is needed)")
        runtime = opts.runtime or self.default_runtime
        try:
            runtime_argv = resolve_runtime(runtime)
        except FileNotFoundError as exc:
            raise InvalidArgument(str(exc)) from exc
        self._creating.add(opts.id)
        state_dir = self.task_dirs / opts.id
        try:
            return await self._spawn(opts, runtime, runtime_argv, state_dir)
        finally:
            self._creating.discard(opts.id)

    async def _spawn(self, opts: CreateOptions, runtime: str, runtime_argv: list[str], state_dir: Path) -> Task:
        state_dir.mkdir(parents=True, exist_ok=True)
        socket_path = self.socket_path(opts.id)
        boot = {
            "id": opts.id, "bundle": opts.bundle, "runtime": runtime_argv, "runtime_name": runtime,
            "runtime_root": str(self.runtime_root), "socket": socket_path, "terminal": opts.terminal,
            "stdin": opts.stdin, "stdin_once": opts.stdin_once,
            "log_path": opts.log_path or str(state_dir / "log.json"),
            "log_max_size": opts.log_max_size, "log_max_file": opts.log_max_file or 1,
            "log_format": opts.log_format, "log_compress": opts.log_compress, "log_attrs": opts.log_attrs or {},
            "namespace": opts.namespace, "start": opts.start,
            "release_on_exit": opts.release_on_exit}
        # The shim's whole truth: never seen half-written (by the shim, or by recover after a crash).
        atomic_write(state_dir / "bootstrap.json", json.dumps(boot).encode(), durable=False)
        try:
            out, err = await self.launcher.launch(opts.id, state_dir)
            try:
                answer = json.loads(out.decode().strip().splitlines()[-1])
            except (ValueError, IndexError):
                raise Internal(f"shim for {opts.id} failed: {err.decode(errors='replace').strip()}") from None
            if "error" in answer:
                raise shim_error(answer)
        except BaseException:
            await self._cleanup_failed(opts.id, runtime_argv, state_dir)
            raise
        init = ProcRecord("", pid=int(answer["pid"]), terminal=opts.terminal)
        task = Task(opts.id, state_dir, socket_path, runtime, runtime_argv, opts.bundle,
                    int(answer["shim_pid"]), init, namespace=opts.namespace)
        self.tasks[opts.id] = task
        self.events.publish(EventType.CREATE, opts.id, pid=init.pid)
        if opts.start:
            task.started_at = answer.get("started_at", "")
            self.events.publish(EventType.START, opts.id, pid=init.pid)
            init.started.set()
        init.watcher = asyncio.create_task(self._watch(task, init))
        task.oom_watcher = asyncio.create_task(self._watch_oom(task))
        log.info("task created", id=opts.id, pid=init.pid, runtime=runtime, started=opts.start)
        return task

    def stop_zygote(self) -> None:
        """On highlevel's own stop (shim_launcher.py): the shims it forked keep running."""
        self.launcher.stop_zygote()

    async def _cleanup_failed(self, id_: str, runtime_argv: list[str], state_dir: Path) -> None:
        """Creation failed: the shim exits by itself; make sure nothing of it stays behind."""
        shim_pid = read_json(state_dir / "bootstrap.json") and read_int(state_dir / "shim.pid")
        fd = shim_process.pidfd(shim_pid, state_dir) if shim_pid else None
        if fd is not None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(fd, signal.SIGKILL)
            os.close(fd)
        await self.force_delete(runtime_argv, id_)
        await asyncio.to_thread(self._remove_traces, id_, state_dir)

    async def start(self, id_: str, exec_id: str = "") -> int:
        task = self.get(id_)
        self._alive(task)
        proc = task.proc(exec_id)
        proc.starting = True
        try:
            reply = await task.client.request(Op.START, exec_id=exec_id)
        except ShimGone:
            proc.starting = False
            await self._shim_died(task)
            raise FailedPrecondition(f"task {id_}: its shim died") from None
        except BaseException:
            proc.starting = False
            raise
        proc.pid = int(reply.get("pid") or proc.pid)
        if exec_id:
            self.events.publish(EventType.EXEC_STARTED, id_, exec_id, proc.pid)
        else:
            task.started_at = reply.get("started_at", "")
            self.events.publish(EventType.START, id_, pid=proc.pid)
        proc.started.set()
        return proc.pid

    def _alive(self, task: Task) -> None:
        if task.dead:
            raise FailedPrecondition(f"task {task.id}: its shim is gone; the task is stopped")

    # ---- exits ------------------------------------------------------------------------------

    async def _watch(self, task: Task, proc: ProcRecord) -> None:
        """Holds a ``wait`` on the shim; its answer (or the shim's death) is the exit event."""
        attempts = 0
        while True:
            try:
                stream = await task.client.open(Op.WAIT, timeout=None, exec_id=proc.exec_id)
                stream.close()
                exit_raw = stream.reply.get("exit") or {}
                break
            except ShimGone:
                attempts += 1
                if attempts >= 3 or not shim_process.alive(task.shim_pid):
                    if proc.exec_id == "":
                        await self._shim_died(task)
                    else:
                        self._record_exit(task, proc, ExitInfo(137, signal.SIGKILL, False, rfc3339_nano()))
                    return
                await asyncio.sleep(0.1 * attempts)
            except NotFound:
                # The exec was deleted before it ended.
                return
        self._record_exit(task, proc, ExitInfo.from_dict(exit_raw))

    async def _watch_oom(self, task: Task, recovered: bool = False) -> None:
        """Holds a ``subscribe`` on the shim: each OOM kill in the container becomes an ``oom`` event."""
        try:
            stream = await task.client.open(Op.SUBSCRIBE, timeout=10)
        except SkiffError:
            return  # the shim is gone or too old: the exit still says oom_killed
        try:
            if recovered:
                # Kills that happened while highlevel was down are not replayed as live events.
                task.oom_kills = max(task.oom_kills, int(stream.reply.get("oom_kill") or 0))
            async for kind, payload in stream.frames():
                if kind != FrameKind.JSON:
                    continue
                try:
                    notice = json.loads(payload)
                    count = int(notice.get("oom_kill") or 0) if notice.get("event") == "oom" else 0
                except (ValueError, TypeError, AttributeError):
                    continue
                if count:
                    # A process killed right after start: its start event still goes out first.
                    await self._after_start(task.init)
                    self._publish_oom(task, count)
        finally:
            stream.close()

    def _publish_oom(self, task: Task, count: int) -> None:
        if count <= task.oom_kills:
            return
        task.oom_kills = count
        self.events.publish(EventType.OOM, task.id, pid=task.init.pid)

    def _record_exit(self, task: Task, proc: ProcRecord, info: ExitInfo) -> None:
        if proc.exit is not None:
            return
        proc.exit = info
        asyncio.create_task(self._publish_exit(task, proc))

    @staticmethod
    async def _after_start(proc: ProcRecord) -> None:
        """Nothing of a process is reported before its start: wait for a start in flight (bounded)."""
        if proc.starting and not proc.started.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(proc.started.wait(), 10)

    async def _publish_exit(self, task: Task, proc: ProcRecord) -> None:
        await self._after_start(proc)
        assert proc.exit is not None
        if proc.exec_id:
            self.events.publish(EventType.EXEC_EXITED, task.id, proc.exec_id, proc.pid, proc.exit.to_proto())
        else:
            if proc.exit.oom_killed:
                # Unless the live notice of this kill came first (it is sent first, on another connection).
                # A record without the counter (an older shim) is announced once.
                self._publish_oom(task, proc.exit.oom_kills or task.oom_kills or 1)
            self.events.publish(EventType.EXIT, task.id, pid=proc.pid, exit_=proc.exit.to_proto())
        proc.exited.set()

    async def _shim_died(self, task: Task) -> None:
        """The shim is gone: the recorded status if it wrote one, else SIGKILL; clean up the container."""
        if task.dead:
            return
        task.dead = True
        status = read_json(task.state_dir / "status.json") or {}
        recorded = status.get("exit")
        info = ExitInfo.from_dict(recorded) if recorded else ExitInfo(137, signal.SIGKILL, False, rfc3339_nano())
        log.warning("shim gone", id=task.id, shim_pid=task.shim_pid, exit_code=info.exit_code)
        await self.force_delete(task.runtime_argv, task.id)
        for proc in [task.init, *task.execs.values()]:
            self._record_exit(task, proc, info if proc is task.init else ExitInfo(137, 9, False, info.exited_at))

    async def wait(self, id_: str, exec_id: str = "") -> ExitInfo:
        task = self.get(id_)
        proc = task.proc(exec_id)
        await proc.exited.wait()
        assert proc.exit is not None
        return proc.exit

    # ---- other operations -------------------------------------------------------------------

    async def shim_call(self, id_: str, op: str, **fields: Any) -> dict[str, Any]:
        task = self.get(id_)
        self._alive(task)
        try:
            return await task.client.request(op, **fields)
        except ShimGone:
            await self._shim_died(task)
            raise FailedPrecondition(f"task {id_}: its shim died") from None

    async def exec(self, id_: str, exec_id: str, process: bytes, terminal: bool, stdin: bool,
                   stdin_once: bool) -> None:
        task = self.get(id_)
        if not exec_id:
            raise InvalidArgument("exec needs an exec id")
        if exec_id in task.execs:
            raise AlreadyExists(f"exec `{exec_id}` of container {id_} already exists")
        try:
            spec = json.loads(process)
        except ValueError as exc:
            raise InvalidArgument(f"exec `{exec_id}`: process is not JSON: {exc}") from exc
        await self.shim_call(id_, Op.EXEC, exec_id=exec_id, process=spec, terminal=terminal, stdin=stdin,
                             stdin_once=stdin_once)
        proc = ProcRecord(exec_id, terminal=terminal)
        task.execs[exec_id] = proc
        self.events.publish(EventType.EXEC_ADDED, id_, exec_id)
        proc.watcher = asyncio.create_task(self._watch(task, proc))

    async def pause(self, id_: str, pause: bool) -> None:
        await self.shim_call(id_, Op.PAUSE if pause else Op.RESUME)
        self.get(id_).paused = pause
        self.events.publish(EventType.PAUSED if pause else EventType.RESUMED, id_)

    async def kill(self, id_: str, exec_id: str, sig: int, all_: bool) -> None:
        await self.shim_call(id_, Op.KILL, exec_id=exec_id, signal=sig or signal.SIGTERM, all=all_)

    async def update(self, id_: str, resources: bytes) -> None:
        try:
            parsed = json.loads(resources)
        except ValueError as exc:
            raise InvalidArgument(f"update of {id_}: resources are not JSON: {exc}") from exc
        if not isinstance(parsed, dict):
            raise InvalidArgument(f"update of {id_}: resources must be a JSON object")
        await self.shim_call(id_, Op.UPDATE, resources=parsed)

    async def list_pids(self, id_: str) -> list[int]:
        reply = await self.shim_call(id_, Op.PIDS)
        return [int(p) for p in reply.get("pids") or []]

    async def stats(self, id_: str) -> dict[str, Any]:
        reply = await self.shim_call(id_, Op.STATS)
        return reply.get("stats") or {}

    async def state(self, id_: str, exec_id: str = "") -> dict[str, Any]:
        task = self.get(id_)
        proc = task.proc(exec_id)
        state: dict[str, Any] = {"id": id_, "exec_id": exec_id, "pid": proc.pid, "terminal": proc.terminal,
                                 "started_at": task.started_at if not exec_id else "", "shim_pid": task.shim_pid}
        if proc.exit is not None:
            return state | {"status": TaskStatus.STOPPED, "exit": proc.exit}
        if task.dead:
            return state | {"status": TaskStatus.STOPPED, "exit": ExitInfo(137, 9)}
        try:
            reply = await task.client.request(Op.STATE, exec_id=exec_id, timeout=10)
        except ShimGone:
            await self._shim_died(task)
            return await self.state(id_, exec_id)
        exit_raw = reply.get("exit")
        return state | {
            "pid": reply.get("pid", proc.pid), "status": TaskStatus(reply["status"]),
            "exit": ExitInfo.from_dict(exit_raw) if exit_raw else None,
            "started_at": reply.get("started_at", ""),
        }

    async def delete(self, id_: str, exec_id: str = "", force: bool = False) -> tuple[int, ExitInfo | None]:
        task = self.get(id_)
        async with task.lock:
            if exec_id:
                proc = task.proc(exec_id)
                await self.shim_call(id_, Op.DELETE, exec_id=exec_id)
                task.execs.pop(exec_id, None)
                if proc.watcher:
                    proc.watcher.cancel()
                return proc.pid, proc.exit
            if not task.dead:
                try:
                    reply = await task.client.request(Op.DELETE, force=force)
                    if reply.get("exit") and task.init.exit is None:
                        task.init.exit = ExitInfo.from_dict(reply["exit"])
                except ShimGone:
                    await self._shim_died(task)
                self._reap_later(task)
            else:
                await self.force_delete(task.runtime_argv, id_)
            for proc in [task.init, *task.execs.values()]:
                if proc.watcher and not proc.watcher.done():
                    proc.watcher.cancel()
            if task.oom_watcher and not task.oom_watcher.done():
                task.oom_watcher.cancel()
            await asyncio.to_thread(self._remove_traces, id_, task.state_dir)
            self.tasks.pop(id_, None)
            self.events.publish(EventType.DELETE, id_, pid=task.init.pid,
                                exit_=task.init.exit.to_proto() if task.init.exit else None)
            return task.init.pid, task.init.exit

    def _reap_later(self, task: Task) -> None:
        """The shim exits right after answering delete (its files already gone): its end is waited for
        off the delete's path, and after 5 s it is SIGKILLed, so "nothing left" holds."""
        waiter = asyncio.ensure_future(shim_process.wait_exit(task.shim_pid, task.state_dir, SHIM_EXIT_TIMEOUT))
        self._exiting.add(waiter)
        waiter.add_done_callback(self._exiting.discard)

    # ---- restart ----------------------------------------------------------------------------

    async def recover(self) -> None:
        """Finds every shim from its state folder; live ones are watched again, dead ones reported."""
        for state_dir in sorted(self.task_dirs.iterdir()):
            boot = read_json(state_dir / "bootstrap.json")
            if boot is None or not state_dir.is_dir():
                await asyncio.to_thread(shutil.rmtree, state_dir, True)
                continue
            try:
                await self._recover_one(state_dir, boot)
            except SkiffError as exc:
                log.warning("task not recovered", id=boot.get("id"), error=exc.message)

    async def _recover_one(self, state_dir: Path, boot: dict[str, Any]) -> None:
        id_ = boot["id"]
        status = read_json(state_dir / "status.json")
        shim_pid = read_int(state_dir / "shim.pid")
        if status is None:
            # The shim died during create: nothing was ever reported, so nothing is kept.
            await self._cleanup_failed(id_, boot["runtime"], state_dir)
            return
        init = ProcRecord("", pid=int(status.get("pid") or 0), terminal=bool(boot.get("terminal")))
        task = Task(id_, state_dir, boot["socket"], boot.get("runtime_name", ""), boot["runtime"], boot["bundle"],
                    shim_pid, init, started_at=status.get("started_at", ""),
                    namespace=boot.get("namespace") or DEFAULT_NAMESPACE)
        if status.get("status") in ("running", "paused", "stopped"):
            init.started.set()
        self.tasks[id_] = task
        try:
            reply = await task.client.request(Op.STATE, timeout=5, execs=True)
        except ShimGone:
            await self._shim_died(task)
            return
        task.paused = reply.get("status") == "paused"
        task.started_at = reply.get("started_at", "")
        init.watcher = asyncio.create_task(self._watch(task, init))
        for found in reply.get("execs") or []:
            # Execs made before the restart: watched again (one that ended meanwhile answers at once).
            proc = ProcRecord(str(found["exec_id"]), pid=int(found.get("pid") or 0),
                              terminal=bool(found.get("terminal")))
            if found.get("status") in ("running", "paused", "stopped"):
                proc.started.set()
            task.execs[proc.exec_id] = proc
            proc.watcher = asyncio.create_task(self._watch(task, proc))
        task.oom_watcher = asyncio.create_task(self._watch_oom(task, recovered=True))
        log.info("task recovered", id=id_, pid=init.pid, status=reply.get("status"), execs=len(task.execs))
