"""The Snapshots gRPC servicer: container root filesystems for the tasks side."""

from __future__ import annotations

import asyncio
from pathlib import Path

from services.common.grpc import grpc_errors
from services.common.paths import Paths
from services.gen.skiff.highlevel.v1 import (
    ExportSnapshotRequest,
    ListSnapshotsRequest,
    ListSnapshotsResponse,
    PrepareSnapshotRequest,
    PrepareSnapshotResponse,
    SnapshotChange,
    SnapshotDiffResponse,
    SnapshotEmpty,
    SnapshotInfo,
    SnapshotKeyRequest,
    SnapshotMount,
    SnapshotMountsResponse,
    SnapshotsBase,
)
from services.highlevel import cgroup_warm
from services.highlevel.images.manager import ImageManager
from services.highlevel.snapshots import mount as mnt
from services.highlevel.snapshots.snapshotter import ChangeKind

_KIND_CODE = {ChangeKind.MODIFIED: 0, ChangeKind.ADDED: 1, ChangeKind.DELETED: 2}


class SnapshotsService(SnapshotsBase):
    def __init__(self, paths: Paths, manager: ImageManager | None = None) -> None:
        self.manager = manager or ImageManager(paths)
        self.snapshots = self.manager.snapshots

    def _mount_pb(self, key: str) -> SnapshotMount:
        spec = self.snapshots.mount_spec(key)
        return SnapshotMount(type=spec.type, source=spec.source, options=spec.options)

    @grpc_errors
    async def prepare(self, request: PrepareSnapshotRequest) -> PrepareSnapshotResponse:
        cgroup_warm.warm()  # a container's filesystem: its task is likely to follow at once
        labels = dict(request.labels)
        if request.image:
            rootfs = await self.manager.prepare(request.image, request.key, mount=not request.no_mount,
                                                labels=labels)
        else:
            rootfs = await asyncio.to_thread(self.snapshots.prepare, request.key, None,
                                             mount=not request.no_mount, labels=labels)
        return PrepareSnapshotResponse(rootfs=str(rootfs), mount=self._mount_pb(request.key))

    @grpc_errors
    async def mounts(self, request: SnapshotKeyRequest) -> SnapshotMountsResponse:
        info = self.snapshots.stat(request.key)
        rootfs = self.snapshots.rootfs_path(info)
        return SnapshotMountsResponse(rootfs=str(rootfs), mount=self._mount_pb(request.key),
                                      mounted=mnt.is_mountpoint(rootfs))

    @grpc_errors
    async def unmount(self, request: SnapshotKeyRequest) -> SnapshotEmpty:
        await asyncio.to_thread(self.snapshots.unmount, request.key)
        return SnapshotEmpty()

    @grpc_errors
    async def remove(self, request: SnapshotKeyRequest) -> SnapshotEmpty:
        await asyncio.to_thread(self.snapshots.remove, request.key)
        return SnapshotEmpty()

    @grpc_errors
    async def list(self, request: ListSnapshotsRequest) -> ListSnapshotsResponse:
        return ListSnapshotsResponse(
            snapshots=[SnapshotInfo(key=s.key, kind=s.kind.value, parent=s.parent or "", created=s.created,
                                    labels=s.labels) for s in self.snapshots.list()],
            driver=self.snapshots.driver.value,
        )

    @grpc_errors
    async def diff(self, request: SnapshotKeyRequest) -> SnapshotDiffResponse:
        # docker diff: the container's own changes, as dockerd shows them.
        changes = await asyncio.to_thread(self.snapshots.changes, request.key, of_container=True)
        return SnapshotDiffResponse(changes=[SnapshotChange(path=c.path, kind=c.kind.value,
                                                            kind_code=_KIND_CODE[c.kind]) for c in changes])

    @grpc_errors
    async def export(self, request: ExportSnapshotRequest) -> SnapshotEmpty:
        await self.manager.export(request.key, Path(request.path))
        return SnapshotEmpty()
