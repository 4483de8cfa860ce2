"""Containers' life: create, start, stop, kill, wait, remove, logs, over highlevel's tasks.

Each container has its own asyncio lock; nothing serialises two containers. Exits are learnt from
one highlevel ``Tasks.Wait`` stream per running container: a task that ended while the daemon was
down answers at once, so no exit is missed across restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import structlog

from services.common.daemon_config import DaemonConfig, LiveConfig, runtime_for
from services.common.errors import (
    AlreadyExists,
    Conflict,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    SkiffError,
    Unavailable,
)
from services.common.grpc import call, client_errors, while_unavailable
from services.common.paths import Paths
from services.daemon import logdrivers
from services.daemon import logs as logfile
from services.daemon.create_settle import make_workdir, settle_config, tagged
from services.daemon.hostopts import start_context
from services.daemon.records import ContainerRecords, Entry, now_rfc3339
from services.daemon.spec import NetworkAttachment, build_spec, image_keys, render_spec
from services.dockermodel.health import merge_image_healthcheck
from services.gen.skiff import highlevel
from services.gen.skiff.daemon.v1 import (
    Container,
    ContainerConfig,
    ContainerState,
    MountPoint,
    State,
    WaitCondition,
)

hl = highlevel.v1
log = structlog.get_logger(service="daemon")

DEFAULT_STOP_TIMEOUT = 10
KILL_GRACE = 30.0
KILL_WAIT = 10.0  # dockerd waits this long for the exit a SIGKILL causes
# How long a refused stop signal waits for the exit that explains it (shim -> highlevel -> daemon).
EXIT_REPORT_GRACE = 2.0
IMAGE_CACHE_SIZE = 256
# (action, entry, attributes): the event bus, restart policies and execs listen to containers' events.
EventSink = Callable[[str, Entry, dict[str, str]], None]


def parse_signal(value: str | int, default: int = signal.SIGKILL) -> int:
    """``SIGTERM``, ``TERM``, ``15`` or empty (the default)."""
    if isinstance(value, int):
        return value or default
    text = value.strip().upper()
    if not text:
        return default
    if text.isdigit():
        return int(text)
    name = text if text.startswith("SIG") else f"SIG{text}"
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise InvalidArgument(f"Invalid signal: {value}") from None


class NetworkHooks(Protocol):
    """What the lifecycle asks of networking (networking.Networking)."""

    async def validate(self, config: ContainerConfig) -> None: ...

    async def setup(self, record: Container) -> NetworkAttachment: ...

    async def teardown(self, record: Container) -> None: ...


class MountHooks(Protocol):
    """What the lifecycle asks of the volumes part (mounts.ContainerMounts)."""

    async def resolve(self, config: ContainerConfig, image_config: dict[str, Any],
                      rootfs: Path) -> list[MountPoint]: ...

    async def release(self, points: list[MountPoint], remove_anonymous: bool) -> None: ...


class ContainerManager:
    """The lifecycle over the shared records; networking and mounts are handed in (server.build_daemon)."""

    def __init__(self, records: ContainerRecords, paths: Paths, channel: object, runtime: str, *,
                 network: NetworkHooks, mounts: MountHooks, settings: LiveConfig | None = None) -> None:
        self.records = records
        self.settings = settings or LiveConfig(paths, current=DaemonConfig())  # daemon.json, reloaded on SIGHUP
        self.entries = records.entries
        self.paths = paths
        self.runtime = runtime
        self.network = network
        self.mounts = mounts
        self.tasks = hl.TasksStub(channel)
        self.images = hl.ImagesStub(channel)
        # Bumped around every image change made through the daemon (images.py): keeps _image honest.
        self.images_changed = 0
        self._images: dict[str, tuple[int, hl.ImageSummary]] = {}
        self.snapshots = hl.SnapshotsStub(channel)
        self.background: set[asyncio.Task[None]] = set()
        self.sinks: list[EventSink] = []

    def subscribe(self, sink: EventSink) -> None:
        """``sink`` hears every container event from now on, in the order subscribed."""
        self.sinks.append(sink)

    # ---- start-up ----

    async def reconcile(self) -> None:
        """Once the records are loaded: each with the task highlevel still has (or not)."""
        tasks = {t.id: t for t in (await call(self.tasks.list(hl.ListTasksRequest()))).tasks}
        for entry in list(self.entries.values()):
            task = tasks.get(entry.record.id)
            if entry.record.state.status == State.REMOVING:
                self._spawn(self.remove(entry.record.id, force=True))
            elif entry.record.state.status == State.RESTARTING and task is None:
                entry.record.state.status = State.EXITED  # its back-off was cut short: the exit stands
            elif entry.running and task is None:
                # The task vanished while we were down (highlevel lost it, or a --rm removal had
                # deleted it): nothing can report its exit.
                await self._mark_exited(entry, hl.ExitStatus(exit_code=255, exited_at=now_rfc3339()))
                if entry.record.config.host.auto_remove:
                    self._spawn(self._auto_remove(entry.record.id))
            elif entry.running:
                self._watch(entry)
            elif entry.record.config.host.auto_remove and entry.record.state.started_at:  # dockerd's restore:
                self._spawn(self._auto_remove(entry.record.id))  # --rm, exited, not removed when we died
            elif task is not None:
                # A start cut short by a crash: highlevel has a task the record never saw start,
                # and its network was never recorded. The start failed for its caller; it fails
                # here too, so no process runs unaccounted for.
                log.warning("removing the task of an unfinished start", id=entry.record.id)
                with contextlib.suppress(SkiffError):
                    await call(self.tasks.delete(hl.DeleteTaskRequest(id=entry.record.id, force=True)))
        # A create cut short by a crash (the daemon killed between highlevel's Prepare and the record's
        # save) left a container snapshot (keyed by the 64-hex id) that no record owns: it goes.
        for snap in (await call(self.snapshots.list(hl.ListSnapshotsRequest()))).snapshots:
            if len(snap.key) == 64 and snap.key not in self.entries and all(c in "0123456789abcdef" for c in snap.key) \
                    and snap.labels.get("skiff.namespace", "moby") == "moby":  # not skiff-cri's pods' snapshots
                log.warning("removing the snapshot of an unfinished create", id=snap.key)
                with contextlib.suppress(SkiffError):
                    await call(self.snapshots.remove(hl.SnapshotKeyRequest(key=snap.key)))

    def emit(self, action: str, entry: Entry, attrs: dict[str, str] | None = None) -> None:
        for sink in self.sinks:
            sink(action, entry, attrs or {})

    @contextlib.contextmanager
    def changing_images(self) -> Iterator[None]:
        """Around every image change made through the daemon: the kept inspect answers go stale."""
        self.images_changed += 1
        try:
            yield
        finally:
            self.images_changed += 1

    async def _image(self, reference: str) -> hl.ImageSummary:
        """The image a create names. Kept between image changes: docker run's create asked highlevel
        for the same image each time (a record encoded and decoded, 3-4 ms a container)."""
        kept = self._images.get(reference)
        if kept is not None and kept[0] == self.images_changed:
            return kept[1]
        generation = self.images_changed
        image = (await call(self.images.inspect(hl.InspectImageRequest(reference=reference)))).image
        if len(self._images) >= IMAGE_CACHE_SIZE:
            self._images.clear()
        self._images[reference] = (generation, image)
        return image

    async def image_config(self, record: Container) -> dict[str, Any]:
        """The image config's keys the record's spec reads (kept at create; a record from before
        they were kept asks the image)."""
        if record.image_config:
            return json.loads(record.image_config)
        image = await self._image(record.image_id)
        return json.loads(image.config or b"{}").get("config") or {}

    def _spawn(self, coro: object) -> None:
        task = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    # ---- lookup ----

    def get(self, ref: str) -> Entry:
        """Full id, name or unique id prefix (records.ContainerRecords.get)."""
        return self.records.get(ref)

    async def save(self, record: Container) -> None:
        await self.records.save(record)

    # ---- create ----

    async def create(self, name: str, config: ContainerConfig) -> Container:
        if not config.image:
            raise InvalidArgument("config.Image is required")
        if config.stop_signal:
            parse_signal(config.stop_signal)  # dockerd refuses an unknown one at create: "Invalid signal: X"
        await self.network.validate(config)
        container_id = secrets.token_hex(32)
        name = self.records.reserve_name(name, container_id)
        prepared = False
        try:
            try:
                image = await self._image(config.image)
            except NotFound:
                # Docker's answer: the client pulls (the CLI and docker-py do) and creates again.
                raise NotFound(f"No such image: {tagged(config.image)}") from None
            image_config = json.loads(image.config or b"{}").get("config") or {}
            # dockerd's mergeAndVerifyLogConfig: the driver and its option keys (values are read at start).
            config.host.log_driver = logdrivers.check_create(config.host.log_driver, dict(config.host.log_opts))
            prepared = True
            try:
                snap = await call(self.snapshots.prepare(hl.PrepareSnapshotRequest(key=container_id, image=image.id)))
            except NotFound:
                self.images_changed += 1  # removed behind the daemon's back: the kept answer was stale
                raise
            rootfs = Path(snap.rootfs)
            # Built to check the settings now (a 400 for the create, not a failed start) and for the argv
            # inspect shows; each start renders its own (render_spec), nothing of it is stored.
            spec = await asyncio.to_thread(build_spec, container_id, image_config, config, rootfs)
            await asyncio.to_thread(make_workdir, rootfs, config.working_dir or image_config.get("WorkingDir") or "")
            settle_config(config, image_config)
            config.healthcheck = merge_image_healthcheck(config.healthcheck, image_config)  # dockerd's merge
            points = await self.mounts.resolve(config, image_config, rootfs)
            record = Container(
                id=container_id, name=name, created=now_rfc3339(), config=config,
                state=ContainerState(status=State.CREATED), image_id=image.id, image_ref=config.image,
                path_args=spec["process"]["args"], rootfs=str(rootfs), image_config=image_keys(image_config),
                log_path=logdrivers.log_path(config.host.log_driver, self.records.folder(container_id), self.paths.run,
                                             container_id),
                mount_points=points,
            )
            await self.save(record)
        except BaseException:
            # No half container left behind: the name, the snapshot and the record's folder go again.
            self.records.names.pop(name, None)
            if prepared:  # in the background: highlevel killed inside the Prepare (mount made) is waited for
                self._spawn(self._auto_remove(container_id, lambda: self._ignore_missing(self.snapshots.remove(
                    hl.SnapshotKeyRequest(key=container_id)))))
            await asyncio.to_thread(self._remove_files, container_id)
            raise
        self.emit("create", self.records.add(record))
        log.info("created", id=container_id, name=name, image=config.image)
        return record

    # ---- start / exit ----

    async def start(self, ref: str) -> None:
        entry = self.get(ref)
        async with entry.lock:
            record = entry.record
            if entry.running and record.state.status != State.RESTARTING:
                raise FailedPrecondition(f"container {record.id} is already started")
            if record.state.status in (State.REMOVING, State.DEAD):
                raise Conflict(f"container {record.id} is marked for removal and cannot be started")
            if record.state.started_at:
                # A task left from an earlier run (its exit already recorded) goes before the new one.
                await self._ignore_missing(self.tasks.delete(hl.DeleteTaskRequest(id=record.id, force=True)))
            cfg = record.config
            try:
                image_config = await self.image_config(record)
                network = await self.network.setup(record)
                # The spec, rendered once for this start, after networking: highlevel writes the bundle.
                create = hl.CreateTaskRequest(
                    id=record.id, spec=await asyncio.to_thread(render_spec, record, image_config, network,
                                                               start_context(self.records, record)),
                    runtime=runtime_for(self.settings.current, cfg.host.runtime, self.runtime),
                    terminal=cfg.tty, stdin=cfg.open_stdin, stdin_once=cfg.stdin_once,
                    log=logdrivers.task_log(record), start=True, release_on_exit=True)
                try:
                    started = await call(self.tasks.create(create))
                except AlreadyExists:
                    # A first start cut short after its task was made (the daemon killed): that one goes.
                    await self._ignore_missing(self.tasks.delete(hl.DeleteTaskRequest(id=record.id, force=True)))
                    started = await call(self.tasks.create(create))
            except SkiffError as exc:
                with contextlib.suppress(SkiffError):
                    await call(self.tasks.delete(hl.DeleteTaskRequest(id=record.id, force=True)))
                await self.network.teardown(record)
                record.state.error = exc.message
                record.state.exit_code = 127 if "exec" in exc.message or "not found" in exc.message else 126
                await self.save(record)
                if cfg.host.auto_remove:
                    # Docker's --rm: a container that cannot start goes too (the CLI waits for its removal).
                    self._spawn(self._auto_remove(record.id))
                if isinstance(exc, FailedPrecondition):
                    # The apiserver answers 304 "already started" to FailedPrecondition: a task that
                    # could not start (its shim died under it) is a failed start, a 500 as dockerd's.
                    raise Internal(f"cannot start container {record.id}: {exc.message}") from exc
                raise
            record.state = ContainerState(status=State.RUNNING, pid=started.pid, started_at=now_rfc3339(),
                                          finished_at=record.state.finished_at)
            record.stopped_by_user = False
            await self.save(record)
            entry.notify()
            self._watch(entry)
            self.emit("start", entry)
        log.info("started", id=record.id, pid=started.pid)

    def _watch(self, entry: Entry) -> None:
        entry.watcher = asyncio.ensure_future(self._watch_exit(entry))

    async def _watch_exit(self, entry: Entry) -> None:
        """Waits on highlevel for this task's exit; rides out a highlevel restart with a bounded back-off."""
        delay = 0.1
        container_id = entry.record.id
        while not entry.removed and entry.running:
            try:
                with client_errors():
                    async for message in self.tasks.wait(hl.WaitRequest(id=container_id)):
                        if message.exited:
                            await self._on_exit(entry, message.exit)
                            return
            except NotFound:
                await self._on_exit(entry, hl.ExitStatus(exit_code=255, exited_at=now_rfc3339()))
                return
            except Unavailable:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _on_exit(self, entry: Entry, status: hl.ExitStatus) -> None:
        async with entry.lock:
            if not entry.running:
                return
            await self._mark_exited(entry, status)
            if status.oom_killed:
                self.emit("oom", entry)
            self.emit("die", entry, {"exitCode": str(status.exit_code)})
            if not entry.record.config.host.auto_remove:
                # The shim has written the status and the log: let it and its runtime state go.
                # (--rm: the removal right after deletes the task, alongside the snapshot.)
                with contextlib.suppress(SkiffError):
                    await call(self.tasks.delete(hl.DeleteTaskRequest(id=entry.record.id, force=True)))
        log.info("exited", id=entry.record.id, code=status.exit_code)
        if entry.record.config.host.auto_remove:
            self._spawn(self._auto_remove(entry.record.id))

    async def _auto_remove(self, container_id: str, attempt: Callable[[], Awaitable[object]] | None = None) -> None:
        try:  # highlevel restarting is no reason to keep a --rm container (or a failed create's snapshot)
            await while_unavailable(attempt or (lambda: self.remove(container_id, force=True)), within=60.0)
        except SkiffError as exc:
            log.warning("auto-remove failed", id=container_id, error=exc.message)

    async def _mark_exited(self, entry: Entry, status: hl.ExitStatus) -> None:
        state = entry.record.state
        state.status = State.EXITED
        state.pid = 0
        state.exit_code = status.exit_code
        state.oom_killed = status.oom_killed
        state.finished_at = status.exited_at or now_rfc3339()
        # Counted with the status: a client that saw "exited" (a wait answers on it) and attaches for
        # the next run must not take this exit, counted after the awaits below, for that run's end.
        entry.exits += 1
        await self.network.teardown(entry.record)
        if entry.record.config.host.auto_remove:
            # Removed next: a daemon stopped before that removes it at restore, where a saved exit would
            # serve nobody. Not saving it takes an encoding and a write off docker run --rm's path.
            self.records.changed_in_memory(entry.record)
        else:
            await self.save(entry.record)
        entry.notify()

    # ---- signals ----

    async def kill(self, ref: str, sig: str | int = "") -> None:
        entry = self.get(ref)
        number = parse_signal(sig)
        if not entry.running:
            raise Conflict(f"Cannot kill container: {ref}: Container {entry.record.id} is not running")
        entry.record.stopped_by_user = True
        self.emit("kill", entry, {"signal": str(number)})
        if await self._end_restarting(entry):
            return
        entry.record.stopped_by_user = True  # a restart under way meanwhile cleared it as it started
        exits = entry.exits
        with contextlib.suppress(NotFound):
            await call(self.tasks.kill(hl.KillRequest(id=entry.record.id, signal=number)))
        if entry.record.state.status == State.PAUSED:
            # A frozen process only acts on the signal once thawed (dockerd resumes it after signalling).
            with contextlib.suppress(SkiffError):
                await call(self.tasks.resume(hl.TaskRequest(id=entry.record.id)))
            if entry.record.state.status == State.PAUSED:
                entry.record.state.status = State.RUNNING
                self.emit("unpause", entry)
        if number == signal.SIGKILL:
            # dockerd's Kill: a SIGKILL is answered once the container no longer runs (other signals at once).
            await self._exited_since(entry, exits, KILL_WAIT)

    async def _end_restarting(self, entry: Entry) -> bool:
        """Stop or kill during a restart policy's back-off: no task runs; the container stays exited.

        A restart already under way (its back-off over, the start holding the lock) is let finish:
        False then, and the caller stops or kills the started container as any other."""
        if entry.record.state.status != State.RESTARTING:
            return False
        async with entry.lock:
            if entry.record.state.status != State.RESTARTING:
                return False
            entry.record.state.status = State.EXITED
            await self.save(entry.record)
        entry.notify()
        return True

    async def stop(self, ref: str, timeout: int | None = None, sig: str = "") -> None:
        entry = self.get(ref)
        if not entry.running:
            return
        entry.record.stopped_by_user = True
        if entry.record.state.status == State.RESTARTING:
            self.emit("kill", entry, {"signal": str(signal.SIGKILL)})  # calls off the pending restart
            if await self._end_restarting(entry) or not entry.running:
                return
            # The restart was under way: its start, done now, cleared the flag set above.
            entry.record.stopped_by_user = True
        if entry.record.state.status == State.PAUSED:
            # A frozen process cannot act on a signal: thaw it first, as dockerd does.
            with contextlib.suppress(SkiffError):
                await call(self.tasks.resume(hl.TaskRequest(id=entry.record.id)))
            entry.record.state.status = State.RUNNING
        cfg = entry.record.config
        number = parse_signal(sig or cfg.stop_signal, default=signal.SIGTERM)
        self.emit("kill", entry, {"signal": str(number)})
        if timeout is None:
            timeout = cfg.stop_timeout if cfg.stop_timeout >= 0 else DEFAULT_STOP_TIMEOUT
        exits = entry.exits
        if timeout != 0:
            await self._signal_unless_exited(entry, exits, hl.KillRequest(id=entry.record.id, signal=number))
            if timeout < 0 or await self._exited_since(entry, exits, float(timeout)):
                if timeout < 0:
                    await self._exited_since(entry, exits, None)
                return
        await self._signal_unless_exited(
            entry, exits, hl.KillRequest(id=entry.record.id, signal=signal.SIGKILL, all=True))
        if not await self._exited_since(entry, exits, KILL_GRACE):
            raise Conflict(f"container {entry.record.id} did not exit after SIGKILL")

    async def _signal_unless_exited(self, entry: Entry, exits: int, request: hl.KillRequest) -> None:
        """A stop's signal; a container that exits on its own meanwhile makes a refused signal moot."""
        try:
            await call(self.tasks.kill(request))
        except NotFound:
            pass
        except SkiffError:
            # The runtime refuses to signal a process that just ended (its exit not yet reported):
            # Docker's stop succeeds then, so this one does once the exit arrives.
            if not await self._exited_since(entry, exits, EXIT_REPORT_GRACE):
                raise

    async def _exited_since(self, entry: Entry, exits: int, timeout: float | None) -> bool:
        """True once the container has exited after the count ``exits`` (or is no longer running)."""
        async def until() -> None:
            while entry.exits == exits and entry.running and not entry.removed:
                await entry.changed.wait()
        try:
            await asyncio.wait_for(until(), timeout)
        except TimeoutError:
            return False
        return True

    # ---- wait ----

    async def wait(self, ref: str, condition: WaitCondition) -> AsyncIterator[tuple[bool, int]]:
        entry = self.get(ref)
        yield False, 0
        if condition == WaitCondition.NOT_RUNNING and not entry.running:
            yield True, entry.record.state.exit_code
            return
        exits = entry.exits
        while True:
            if condition == WaitCondition.REMOVED:
                if entry.removed:
                    break
            elif entry.exits > exits or (condition == WaitCondition.NOT_RUNNING and not entry.running
                                         and entry.record.state.status != State.CREATED) or entry.removed:
                break
            await entry.changed.wait()
        yield True, entry.record.state.exit_code

    # ---- remove ----

    async def remove(self, ref: str, force: bool = False, volumes: bool = False) -> None:
        entry = self.get(ref)
        record = entry.record
        if entry.running:
            if not force:
                raise Conflict(f"You cannot remove a running container {record.id}. Stop the container before "
                               "attempting removal or force remove")
            # It may exit (or finish a restart) meanwhile: "not running" is no reason to refuse a
            # forced removal, which deletes whatever task is left below anyway.
            with contextlib.suppress(FailedPrecondition, Conflict):
                await self.stop(record.id, timeout=0)
        async with entry.lock:
            if entry.removed:
                return
            saved_exited = record.state.status == State.EXITED and record.config.host.auto_remove \
                and record.state.started_at
            record.state.status = State.REMOVING
            if not saved_exited:  # an exited --rm container's saved record is removed at restore already
                await self.save(record)  # so that restore finishes a removal cut short by a crash
            # Independent of one another: the task (shim, runtime state, cgroups), the snapshot (the
            # container's mount namespace is gone with its processes), the network and the attach feed.
            outcomes = await asyncio.gather(
                self._ignore_missing(self.tasks.delete(hl.DeleteTaskRequest(id=record.id, force=True))),
                self._ignore_missing(self.snapshots.remove(hl.SnapshotKeyRequest(key=record.id))),
                self.network.teardown(record),
                asyncio.to_thread(logfile.remove_feed, logdrivers.attach_feed(self.paths.run, record.id)),
                return_exceptions=True,
            )
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    raise outcome
            self.records.drop(record)
            entry.removed = True
            entry.notify()
            self.emit("destroy", entry)
            # The record's folder goes after the waiters hear of the removal (docker run --rm's CLI waits
            # for it): a crash first leaves a record that restore removes, as above.
            self._spawn(asyncio.to_thread(self.records.store.delete, record.id))
        if entry.watcher is not None:
            entry.watcher.cancel()
        # Docker: --rm and rm -v take the container's anonymous volumes with it.
        await self.mounts.release(list(record.mount_points), volumes or record.config.host.auto_remove)
        log.info("removed", id=record.id)

    @staticmethod
    async def _ignore_missing(request: Awaitable[object]) -> None:
        with contextlib.suppress(NotFound):
            await call(request)

    def _remove_files(self, container_id: str) -> None:
        self.records.store.delete(container_id)
        logfile.remove_feed(logdrivers.attach_feed(self.paths.run, container_id))

    async def close(self) -> None:
        for entry in self.entries.values():
            if entry.watcher is not None:
                entry.watcher.cancel()
        for task in list(self.background):
            task.cancel()

