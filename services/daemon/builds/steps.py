"""The steps of a build that make something: a config-only child image (ENV, CMD, ...), a step that
writes into a snapshot of the parent (COPY, ADD, WORKDIR), and RUN in a real container through the
daemon's ContainerManager, the path ``docker run`` takes (highlevel, shim, low-level runtime); each
committed through highlevel's commit as an overlay diff over the parent."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from services.common.daemon_config import apply_runtime_default, apply_ulimit_defaults
from services.common.errors import NotFound, SkiffError
from services.common.grpc import call
from services.daemon import container_output
from services.daemon.containers import ContainerManager
from services.daemon.hostopts import prepare
from services.gen.skiff import highlevel
from services.gen.skiff.daemon.v1 import (
    BuildOptions,
    ContainerConfig,
    HealthConfig,
    HostConfig,
    LogStream,
    Ulimit,
    WaitCondition,
)

hl = highlevel.v1
Emit = Callable[[str], Awaitable[None]]


class StepFailed(SkiffError):
    """A RUN whose command exited non-zero: the build's error, with the exit code as its code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class Steps:
    def __init__(self, manager: ContainerManager, options: BuildOptions, emit: Emit) -> None:
        self.manager = manager
        self.options = options
        self.emit = emit
        self.kept: list[str] = []   # intermediate containers left (rm=0, or a failure without forcerm)
        self.views: dict[str, tuple[str, Path]] = {}

    async def commit(self, parent: str, config: dict[str, Any], created_by: str, author: str,
                     snapshot_key: str = "") -> str:
        with self.manager.changing_images():
            reply = await call(self.manager.images.commit(hl.CommitImageRequest(
                snapshot_key=snapshot_key, parent_image=parent, config=json.dumps(config).encode(),
                created_by=created_by, author=author)))
        return reply.id

    async def in_snapshot(self, parent: str, config: dict[str, Any], created_by: str, author: str,
                          work: Callable[[Path], None]) -> str:
        """COPY, ADD, WORKDIR: ``work`` writes into a snapshot over ``parent`` (in a thread), committed."""
        key = "build-" + secrets.token_hex(16)
        snap = await call(self.manager.snapshots.prepare(hl.PrepareSnapshotRequest(key=key, image=parent)))
        try:
            await asyncio.to_thread(work, Path(snap.rootfs))
            return await self.commit(parent, config, created_by, author, snapshot_key=key)
        finally:
            with contextlib.suppress(SkiffError):
                await call(self.manager.snapshots.remove(hl.SnapshotKeyRequest(key=key)))

    async def view(self, image: str) -> Path:
        """A readable root of ``image`` (COPY --from), kept until the build ends."""
        if image not in self.views:
            key = "build-view-" + secrets.token_hex(16)
            snap = await call(self.manager.snapshots.prepare(hl.PrepareSnapshotRequest(key=key, image=image)))
            self.views[image] = (key, Path(snap.rootfs))
        return self.views[image][1]

    async def close(self) -> None:
        for key, _ in self.views.values():
            with contextlib.suppress(SkiffError):
                await call(self.manager.snapshots.remove(hl.SnapshotKeyRequest(key=key)))
        self.views.clear()

    async def run(self, parent: str, config: dict[str, Any], argv: list[str], env: list[str], created_by: str,
                  author: str) -> str:
        """RUN: a container from ``parent`` running ``argv``, its output streamed, committed on success."""
        o = self.options
        # dockerd's hostConfigFromOptions: the build's resources, network and hosts; no log kept (the
        # output reaches the stream through attach).
        host = HostConfig(network_mode=o.network_mode or "bridge", memory=o.memory, memory_swap=o.memory_swap,
                          cpu_shares=o.cpu_shares, cpu_period=o.cpu_period, cpu_quota=o.cpu_quota,
                          cpuset_cpus=o.cpuset_cpus, cpuset_mems=o.cpuset_mems, shm_size=o.shm_size,
                          ulimits=list(o.ulimits), extra_hosts=list(o.extra_hosts), log_driver="none")
        create = ContainerConfig(
            image=parent, cmd=argv, entrypoint=[], entrypoint_set=True, env=env,
            working_dir=str(config.get("WorkingDir") or ""), user=str(config.get("User") or ""),
            host=host, stop_timeout=-1, healthcheck=HealthConfig(set=True, test=["NONE"]))
        # The create path's defaults and checks, as dockerd's builder creates through the daemon's own
        # create (default runtime and ulimits from daemon.json; a swap below the memory refused).
        settings = self.manager.settings.current
        apply_runtime_default(settings, host)
        apply_ulimit_defaults(settings, host, Ulimit)
        warnings = await prepare(self.manager.records, create)
        record = await self.manager.create("", create)
        cid = record.id
        for warning in warnings:
            await self.emit(f" ---> [Warning] {warning}\n")
        await self.emit(f" ---> Running in {cid[:12]}\n")
        removed = False
        try:
            code = await self._start_and_wait(cid)
            if code != 0:
                raise StepFailed(f"The command '{' '.join(argv)}' returned a non-zero code: {code}", code)
            image = await self.commit(parent, config, created_by, author, snapshot_key=cid)
            if o.remove or o.force_remove:
                await self._remove(cid)
                removed = True
                await self.emit(f" ---> Removed intermediate container {cid[:12]}\n")
            return image
        except BaseException as exc:
            # A failed step's container stays for inspection unless forcerm (dockerd's rule); one cut
            # short (the client went away) never stays running.
            cancelled = isinstance(exc, asyncio.CancelledError)
            if not removed and (o.force_remove or cancelled):
                await asyncio.shield(self._remove(cid))
                removed = True
            raise
        finally:
            if not removed:
                self.kept.append(cid)

    async def _start_and_wait(self, cid: str) -> int:
        output = container_output.attach_output(self.manager.get(cid), True, True)
        try:
            await output.__anext__()  # armed: nothing the command writes is missed
            try:
                await self.manager.start(cid)
            except SkiffError as exc:
                entry = self.manager.get(cid)
                raise StepFailed(exc.message, entry.record.state.exit_code or 126) from None
            async for item in output:
                if item.stream in (LogStream.STDOUT, LogStream.STDERR) and item.data:
                    await self.emit(item.data.decode(errors="replace"))
        finally:
            await output.aclose()
        async for done, code in self.manager.wait(cid, WaitCondition.NOT_RUNNING):
            if done:
                return code
        return self.manager.get(cid).record.state.exit_code

    async def _remove(self, cid: str) -> None:
        with contextlib.suppress(NotFound):
            await self.manager.remove(cid, force=True, volumes=True)
