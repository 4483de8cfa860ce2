"""The ContainerRemoval service: ``docker container prune`` and the removal of a legacy link.

Prune is dockerd's ContainersPrune: every container that does not run, created before ``until`` and
matching the label filters, removed as ``docker rm`` would (no force, volumes kept); one that cannot
be removed is skipped. The space reclaimed is the sum of their writable layers' sizes.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog

from services.common.errors import SkiffError
from services.common.grpc import grpc_errors
from services.daemon import links
from services.daemon.containers import ContainerManager
from services.daemon.volumes import tree_size
from services.dockermodel.times import parse_time
from services.gen.skiff.daemon.v1 import (
    Container,
    ContainerPruneRequest,
    ContainerPruneResponse,
    ContainerRemovalBase,
    Empty,
    UnlinkRequest,
)

log = structlog.get_logger(service="daemon")


def _label_matches(labels: dict[str, str], wanted: str) -> bool:
    key, eq, value = wanted.partition("=")
    return key in labels and (not eq or labels[key] == value)


def selected(record: Container, request: ContainerPruneRequest) -> bool:
    """dockerd's filters: created before ``until``; every ``label`` matching; not all ``label!`` matching."""
    if request.until_ns and parse_time(record.created) * 1e9 > request.until_ns:
        return False
    labels = dict(record.config.labels)
    if not all(_label_matches(labels, w) for w in request.label):
        return False
    return not (request.label_not and all(_label_matches(labels, w) for w in request.label_not))


def writable_size(record: Container) -> int:
    """Bytes of the container's own layer: the overlay's upper folder beside its merged root (blocking)."""
    rootfs = Path(record.rootfs)
    upper = rootfs.parent / "fs" if rootfs.name == "merged" else rootfs
    return tree_size(upper) if upper.is_dir() else 0


class RemovalService(ContainerRemovalBase):
    def __init__(self, manager: ContainerManager) -> None:
        self.manager = manager

    @grpc_errors
    async def prune(self, container_prune_request: ContainerPruneRequest) -> ContainerPruneResponse:
        deleted: list[str] = []
        reclaimed = 0
        for entry in list(self.manager.records.entries.values()):
            record = entry.record
            if entry.running or entry.removed or not selected(record, container_prune_request):
                continue
            size = await asyncio.to_thread(writable_size, record)
            try:
                await self.manager.remove(record.id)
            except SkiffError as exc:
                log.warning("prune: container not removed", id=record.id, error=exc.message)
                continue
            deleted.append(record.id)
            reclaimed += size
        return ContainerPruneResponse(deleted=deleted, space_reclaimed=reclaimed)

    @grpc_errors
    async def unlink(self, unlink_request: UnlinkRequest) -> Empty:
        await links.unlink(self.manager.records, unlink_request.name)
        return Empty()
