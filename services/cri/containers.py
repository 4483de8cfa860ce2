"""Containers in pods: create, start, stop, remove, and their exits, over highlevel's tasks.

A container is a snapshot of its image (prepared at create, labelled with skiff-cri's namespace) and,
from its start, a highlevel task in the ``k8s.io`` namespace whose output the shim writes in the CRI
log format at the container's ``log_path``. One watcher per started container holds a Wait on its
task: the exit (code, OOM kill) is recorded, then the task is deleted (its shim goes), as
containerd's CRI plugin does. Records are saved at every change, and a restarted skiff-cri watches
the tasks still there again.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import json
import os
import secrets
import signal
import time
from pathlib import Path
from typing import Any

import structlog
from grpclib.client import Channel

from services.common.errors import FailedPrecondition, InvalidArgument, NotFound, SkiffError
from services.common.grpc import call
from services.cri import spec
from services.cri.settings import NAMESPACE, NAMESPACE_LABEL
from services.cri.state import CriState, container_name
from services.cri.store import ContainerRecord, SandboxRecord, encode_config
from services.gen.runtime.v1 import ContainerConfig, LinuxContainerResources
from services.gen.skiff.highlevel import v1 as hl

log = structlog.get_logger(service="cri")

KILL_WAIT = 10.0  # after SIGKILL, the exit must come within this


def rfc3339_to_ns(stamp: str) -> int:
    """``2026-12-06T10:00:00.123456789Z`` in ns since the epoch (0 when empty or unreadable)."""
    if not stamp:
        return 0
    try:
        whole, _, rest = stamp.rstrip("Z").partition(".")
        seconds = calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S"))
        return int(seconds) * 1_000_000_000 + int((rest or "0")[:9].ljust(9, "0"))
    except ValueError:
        return 0


class ContainerManager:
    def __init__(self, state: CriState, channel: Channel) -> None:
        self.state = state
        self.settings = state.settings
        self.tasks = hl.TasksStub(channel)
        self.snapshots = hl.SnapshotsStub(channel)
        self.images = hl.ImagesStub(channel)
        self.exited: dict[str, asyncio.Event] = {}
        self.watchers: dict[str, asyncio.Task[None]] = {}

    # ---- create ---------------------------------------------------------------------------

    async def image_config(self, image_id: str) -> dict[str, Any]:
        image = (await call(self.images.inspect(hl.InspectImageRequest(reference=image_id)))).image
        return json.loads(image.config or b"{}").get("config") or {}

    async def create(self, sandbox_id: str, config: ContainerConfig) -> str:
        sandbox = self.state.sandbox(sandbox_id)
        if not sandbox.ready:
            raise FailedPrecondition(f"pod sandbox {sandbox.id} is not ready")
        if not config.metadata.name:
            raise InvalidArgument("container config: metadata.name is required")
        if not config.image.image:
            raise InvalidArgument("container config: image is required")
        try:
            image = (await call(self.images.inspect(hl.InspectImageRequest(reference=config.image.image)))).image
        except NotFound:
            raise NotFound(f"image `{config.image.image}`: not found (pull it first)") from None
        id_ = secrets.token_hex(32)
        record = ContainerRecord(id=id_, sandbox_id=sandbox.id, config_b64=encode_config(config),
                                 image_ref=config.image.image, image_id=image.id, created_at=time.time_ns())
        if config.log_path and sandbox.config.log_directory:
            record.log_path = os.path.join(sandbox.config.log_directory, config.log_path)
        name = container_name(record, sandbox)
        self.state.reserve(name, id_)
        try:
            prepared = await call(self.snapshots.prepare(hl.PrepareSnapshotRequest(
                key=id_, image=image.id, labels={NAMESPACE_LABEL: NAMESPACE})))
            record.rootfs = prepared.rootfs
            try:
                image_config = json.loads(image.config or b"{}").get("config") or {}
                # Checked now, so that a bad config is the create's error, not a failed start.
                await asyncio.to_thread(spec.build, id_, config, sandbox, image_config, Path(record.rootfs),
                                        self._cgroups_path(sandbox, id_))
                self.state.containers[id_] = record
                self.state.save(record)
            except BaseException:
                self.state.containers.pop(id_, None)
                with contextlib.suppress(SkiffError):
                    await call(self.snapshots.remove(hl.SnapshotKeyRequest(key=id_)))
                raise
        except BaseException:
            self.state.release(name, id_)
            raise
        log.info("container created", id=id_, sandbox=sandbox.id, name=config.metadata.name)
        return id_

    @staticmethod
    def _cgroups_path(sandbox: SandboxRecord, id_: str) -> str:
        return f"{sandbox.cgroup_parent.rstrip('/')}/{id_}"

    # ---- start and exits ------------------------------------------------------------------

    async def render(self, record: ContainerRecord) -> dict[str, Any]:
        sandbox = self.state.sandbox(record.sandbox_id)
        image_config = await self.image_config(record.image_id)
        built = await asyncio.to_thread(spec.build, record.id, record.config, sandbox, image_config,
                                        Path(record.rootfs), self._cgroups_path(sandbox, record.id))
        if record.resources_json:
            built["linux"]["resources"].update(json.loads(record.resources_json))
        return built

    async def start(self, id_: str) -> None:
        record = self.state.container(id_)
        if record.state != "created":
            raise FailedPrecondition(f"container {record.id} is {record.state}, not created")
        sandbox = self.state.sandbox(record.sandbox_id)
        if not sandbox.ready:
            raise FailedPrecondition(f"pod sandbox {sandbox.id} is not ready")
        config = record.config
        try:
            built = await self.render(record)
            if record.log_path:
                await asyncio.to_thread(os.makedirs, os.path.dirname(record.log_path), exist_ok=True)
            await call(self.tasks.create(hl.CreateTaskRequest(
                id=record.id, spec=json.dumps(built).encode(), runtime=self.settings.runtime, terminal=config.tty,
                stdin=config.stdin, stdin_once=config.stdin_once, namespace=NAMESPACE,
                log=hl.LogConfig(path=record.log_path, format="cri") if record.log_path else None)))
            record.task = True
            self.state.save(record)
            self.exited[record.id] = asyncio.Event()
            pid = (await call(self.tasks.start(hl.StartRequest(id=record.id)))).pid
        except SkiffError as exc:
            # As containerd: a start that failed leaves the container exited, with the reason.
            record.state, record.exit_code, record.reason, record.message = "exited", 128, "StartError", exc.message
            record.finished_at = time.time_ns()
            await self._delete_task(record)
            self.state.save(record)
            self.exited.setdefault(record.id, asyncio.Event()).set()
            raise
        record.state, record.pid, record.started_at = "running", pid, time.time_ns()
        self.state.save(record)
        self._watch(record)
        log.info("container started", id=record.id, pid=pid)

    def _watch(self, record: ContainerRecord) -> None:
        self.exited.setdefault(record.id, asyncio.Event())
        self.watchers[record.id] = asyncio.ensure_future(self._watch_exit(record))

    async def _watch_exit(self, record: ContainerRecord) -> None:
        status: hl.ExitStatus | None = None
        delay = 0.2
        while status is None:
            try:
                async for answer in self.tasks.wait(hl.WaitRequest(id=record.id)):
                    if answer.exited:
                        status = answer.exit
            except Exception as exc:  # noqa: BLE001 - highlevel away or the task gone: decided below
                error = exc
            else:
                error = None
            if status is None:
                if error is not None and "not found" not in str(error):
                    await asyncio.sleep(delay)  # highlevel restarting: wait on again
                    delay = min(delay * 2, 2.0)
                    continue
                status = hl.ExitStatus(exit_code=255, exited_at="")  # the task vanished: nothing tells its exit
        record.state, record.exit_code = "exited", status.exit_code
        record.finished_at = rfc3339_to_ns(status.exited_at) or time.time_ns()
        record.reason = "OOMKilled" if status.oom_killed else ("Completed" if status.exit_code == 0 else "Error")
        await self._delete_task(record)
        self.state.save(record)
        self.exited.setdefault(record.id, asyncio.Event()).set()
        self.watchers.pop(record.id, None)
        log.info("container exited", id=record.id, exit_code=record.exit_code, reason=record.reason)

    async def _delete_task(self, record: ContainerRecord) -> None:
        if not record.task:
            return
        with contextlib.suppress(NotFound):
            await call(self.tasks.delete(hl.DeleteTaskRequest(id=record.id, force=True)))
        record.task = False

    async def recover(self) -> None:
        """After skiff-cri's restart: running containers are watched again (an exit meanwhile is read
        at once from highlevel's task; a task gone since is an exit without a status)."""
        listed = await call(self.tasks.list(hl.ListTasksRequest(namespace=NAMESPACE)))
        known = {t.id for t in listed.tasks}
        for record in self.state.containers.values():
            if record.state == "running":
                self._watch(record)
            elif record.task and record.id in known:
                await self._delete_task(record)
                self.state.save(record)
        for task in listed.tasks:  # a start cut short by our death: its task no record knows of
            if task.id not in self.state.containers and task.id not in self.state.sandboxes:
                with contextlib.suppress(SkiffError):
                    await call(self.tasks.delete(hl.DeleteTaskRequest(id=task.id, force=True)))

    # ---- stop and remove ------------------------------------------------------------------

    async def stop(self, id_: str, timeout: int) -> None:
        record = self.state.container(id_)
        if record.state != "running":
            return
        exited = self.exited.setdefault(record.id, asyncio.Event())
        if timeout > 0:
            with contextlib.suppress(SkiffError):
                stop_signal = await self._stop_signal(record)
                await call(self.tasks.kill(hl.KillRequest(id=record.id, signal=stop_signal)))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(exited.wait(), timeout)
        if not exited.is_set():
            with contextlib.suppress(SkiffError):
                await call(self.tasks.kill(hl.KillRequest(id=record.id, signal=signal.SIGKILL, all=True)))
            try:
                await asyncio.wait_for(exited.wait(), KILL_WAIT)
            except TimeoutError:
                raise FailedPrecondition(f"container {record.id}: no exit within {KILL_WAIT:.0f}s of SIGKILL") from None
        log.info("container stopped", id=record.id)

    async def _stop_signal(self, record: ContainerRecord) -> int:
        """The image's StopSignal (nginx's SIGQUIT), else SIGTERM, as containerd's CRI plugin."""
        try:
            named = str((await self.image_config(record.image_id)).get("StopSignal") or "")
        except SkiffError:
            named = ""
        if named.isdigit():
            return int(named)
        name = named.upper() if named.upper().startswith("SIG") else "SIG" + named.upper()
        return int(signal.Signals[name]) if name in signal.Signals.__members__ else int(signal.SIGTERM)

    async def stop_all(self, sandbox_id: str) -> None:
        await asyncio.gather(*(self.stop(c.id, 0) for c in self.state.of_sandbox(sandbox_id)))

    async def remove(self, id_: str) -> None:
        """Idempotent: an unknown container is already removed. A running one is killed first."""
        try:
            record = self.state.container(id_)
        except NotFound:
            return
        await self.stop(record.id, 0)
        await self._delete_task(record)
        with contextlib.suppress(NotFound):
            await call(self.snapshots.remove(hl.SnapshotKeyRequest(key=record.id)))
        self.state.containers.pop(record.id, None)
        self.state.container_store.delete(record.id)
        self.state.release(container_name(record, self.state.sandboxes.get(record.sandbox_id)), record.id)
        self.exited.pop(record.id, None)
        log.info("container removed", id=record.id)

    async def remove_all(self, sandbox_id: str) -> None:
        for record in self.state.of_sandbox(sandbox_id):
            await self.remove(record.id)

    # ---- updates --------------------------------------------------------------------------

    async def update_resources(self, id_: str, resources: LinuxContainerResources | None) -> None:
        record = self.state.container(id_)
        if record.state == "exited":
            raise FailedPrecondition(f"container {record.id} has exited")
        oci = spec.resources(resources)
        merged = json.loads(record.resources_json or "{}") | oci
        if record.state == "running" and oci:
            await call(self.tasks.update(hl.UpdateRequest(id=record.id, resources=json.dumps(oci).encode())))
        record.resources_json = json.dumps(merged)
        self.state.save(record)

    async def reopen_log(self, id_: str) -> None:
        """kubelet renamed the log: a new file now (the shim writes to it from its next line on)."""
        record = self.state.container(id_)
        if record.state != "running":
            raise FailedPrecondition(f"container {record.id} is not running")
        if record.log_path:
            def touch() -> None:
                os.close(os.open(record.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640))

            await asyncio.to_thread(touch)
