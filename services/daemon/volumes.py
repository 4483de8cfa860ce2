"""Volumes of the local driver: one folder per volume under ``<lib>/daemon/volumes/<name>``.

Each volume holds ``_data`` (what containers see) and ``volume.json`` (driver, labels, options,
creation time), written atomically. Which containers use a volume is not stored here: the caller
passes a ``users`` function over the container records, so the records stay the one truth.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import structlog

from services.common.errors import Conflict, InvalidArgument, NotFound
from services.common.grpc import grpc_errors
from services.gen.skiff.daemon.v1 import (
    CreateVolumeRequest,
    ListVolumesRequest,
    ListVolumesResponse,
    PruneVolumesRequest,
    PruneVolumesResponse,
    RemoveVolumeRequest,
    Volume,
    VolumeFilters,
    VolumeRef,
    VolumesBase,
    VolumesEmpty,
)

log = structlog.get_logger(service="daemon")
NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
META = "volume.json"
ANONYMOUS_LABEL = "com.docker.volume.anonymous"
# Users of a volume: the ids of the containers whose mounts name it.
UsersFn = Callable[[str], list[str]]


def _rfc3339(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def tree_size(path: Path) -> int:
    """Bytes of the files under ``path``, as dockerd's directory.Size: folders count nothing, a file
    with several links once, links not followed (blocking: call in a thread)."""
    total = 0
    seen: set[tuple[int, int]] = set()
    for folder, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(folder, name))
            except OSError:
                continue
            if st.st_nlink > 1:
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
            total += st.st_size
    return total


class VolumeStore:
    """The volumes on disk; every method blocks (call in a thread), none keeps state in memory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def folder(self, name: str) -> Path:
        return self.root / name

    def data(self, name: str) -> Path:
        return self.root / name / "_data"

    def create(self, name: str, labels: dict[str, str], options: dict[str, str], anonymous: bool = False) -> Volume:
        if not name:
            name = secrets.token_hex(32)
            anonymous = True
        if not NAME_RE.match(name):
            raise InvalidArgument(f'create {name}: "{name}" includes invalid characters for a local volume name, '
                                  "only \"[a-zA-Z0-9][a-zA-Z0-9_.-]\" are allowed. If you intended to pass a host "
                                  "directory, use absolute path")
        if self.exists(name):
            # Docker: creating an existing volume returns it (labels are not changed).
            return self.get(name)
        folder = self.folder(name)
        tmp = self.root / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "_data").mkdir(parents=True)
        os.chmod(tmp / "_data", 0o755)
        if anonymous:
            labels = {**labels, ANONYMOUS_LABEL: ""}
        meta = {"Driver": "local", "Labels": labels, "Options": options, "CreatedAt": _rfc3339(time.time())}
        with open(tmp / META, "w") as f:
            json.dump(meta, f)
            f.flush()
            os.fsync(f.fileno())
        try:
            tmp.rename(folder)
        except OSError:
            # Created meanwhile by a concurrent call: theirs wins.
            shutil.rmtree(tmp, ignore_errors=True)
        return self.get(name)

    def exists(self, name: str) -> bool:
        return bool(NAME_RE.match(name)) and (self.folder(name) / META).is_file()

    def get(self, name: str) -> Volume:
        if not name or not NAME_RE.match(name):
            raise NotFound(f"get {name}: no such volume")
        try:
            meta = json.loads((self.folder(name) / META).read_text())
        except (OSError, ValueError):
            raise NotFound(f"get {name}: no such volume") from None
        labels = {str(k): str(v) for k, v in (meta.get("Labels") or {}).items()}
        return Volume(
            name=name, driver="local", mountpoint=str(self.data(name)), labels=labels,
            options={str(k): str(v) for k, v in (meta.get("Options") or {}).items()}, scope="local",
            created_at=meta.get("CreatedAt", ""), anonymous=ANONYMOUS_LABEL in labels, size=-1, ref_count=-1)

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if not p.name.startswith(".") and (p / META).is_file())

    def delete(self, name: str) -> int:
        """Removes the volume; returns the bytes it held."""
        folder = self.folder(name)
        size = tree_size(self.data(name))  # what containers put there (volume.json is ours)
        # Renamed first, so a half-removed volume is never listed.
        doomed = self.root / f".{name}.removing"
        shutil.rmtree(doomed, ignore_errors=True)
        try:
            folder.rename(doomed)
        except FileNotFoundError:
            raise NotFound(f"get {name}: no such volume") from None
        shutil.rmtree(doomed, ignore_errors=True)
        return size


def _label_matches(labels: dict[str, str], wanted: str) -> bool:
    key, eq, value = wanted.partition("=")
    return key in labels and (not eq or labels[key] == value)


def _matches(volume: Volume, filters: VolumeFilters, in_use: bool) -> bool:
    if filters.name and not any(n in volume.name for n in filters.name):
        return False
    if filters.driver and volume.driver not in filters.driver:
        return False
    for wanted in filters.label:
        # A leading "!": prune's label! (the volume must not match it).
        if wanted.startswith("!") == _label_matches(volume.labels, wanted.lstrip("!")):
            return False
    for dangling in filters.dangling:
        if dangling.lower() in ("true", "1") and in_use:
            return False
        if dangling.lower() in ("false", "0") and not in_use:
            return False
        if dangling.lower() not in ("true", "1", "false", "0"):
            raise InvalidArgument(f"invalid filter 'dangling={dangling}'")
    return True


class VolumesService(VolumesBase):
    def __init__(self, store: VolumeStore, users: UsersFn) -> None:
        self.store = store
        self.users = users
        # Per-name locks: a remove never races a create or a mount of the same volume.
        self.locks: dict[str, asyncio.Lock] = {}

    def lock(self, name: str) -> asyncio.Lock:
        return self.locks.setdefault(name, asyncio.Lock())

    @grpc_errors
    async def create(self, create_volume_request: CreateVolumeRequest) -> Volume:
        r = create_volume_request
        # dockerd names the volume in its refusals ("create <name>: ..."), a generated name too.
        name = r.name or secrets.token_hex(32)
        if r.driver not in ("", "local"):
            raise NotFound(f"create {name}: error looking up volume plugin {r.driver}: plugin \"{r.driver}\" "
                           "not found")
        for key in r.driver_opts:
            if key not in ("type", "device", "o", "size"):
                raise InvalidArgument(f'create {name}: invalid option: "{key}"')
        async with self.lock(name):
            volume = await asyncio.to_thread(self.store.create, name, dict(r.labels), dict(r.driver_opts),
                                             anonymous=not r.name)
        log.info("volume created", name=volume.name)
        return volume

    @grpc_errors
    async def list(self, list_volumes_request: ListVolumesRequest) -> ListVolumesResponse:
        filters = list_volumes_request.filters
        volumes = []
        for name in await asyncio.to_thread(self.store.names):
            try:
                volume = await asyncio.to_thread(self.store.get, name)
            except NotFound:
                continue
            if _matches(volume, filters, bool(self.users(name))):
                volumes.append(volume)
        return ListVolumesResponse(volumes=volumes)

    @grpc_errors
    async def inspect(self, volume_ref: VolumeRef) -> Volume:
        return await asyncio.to_thread(self.store.get, volume_ref.name)

    @grpc_errors
    async def remove(self, remove_volume_request: RemoveVolumeRequest) -> VolumesEmpty:
        r = remove_volume_request
        async with self.lock(r.name):
            await self._remove(r.name, r.force)
        return VolumesEmpty()

    async def _remove(self, name: str, force: bool) -> int:
        if not await asyncio.to_thread(self.store.exists, name):
            if force:
                return 0
            raise NotFound(f"get {name}: no such volume")
        users = self.users(name)
        if users:
            # Even with force: Docker never removes a volume a container uses.
            raise Conflict(f"remove {name}: volume is in use - [{', '.join(users)}]")
        size = await asyncio.to_thread(self.store.delete, name)
        self.locks.pop(name, None)
        log.info("volume removed", name=name)
        return size

    async def remove_anonymous(self, names: list[str]) -> None:
        """The container's anonymous volumes, after the container itself is gone (--rm, rm -v)."""
        for name in names:
            async with self.lock(name):
                try:
                    await self._remove(name, force=True)
                except Conflict:
                    continue  # another container mounts it too (--volumes-from): it stays

    @grpc_errors
    async def prune(self, prune_volumes_request: PruneVolumesRequest) -> PruneVolumesResponse:
        r = prune_volumes_request
        deleted: list[str] = []
        reclaimed = 0
        for name in await asyncio.to_thread(self.store.names):
            try:
                volume = await asyncio.to_thread(self.store.get, name)
            except NotFound:
                continue
            # Docker (API >= 1.42): only anonymous volumes unless all=true.
            if not (r.all or volume.anonymous) or not _matches(volume, r.filters, False):
                continue
            async with self.lock(name):
                if self.users(name):
                    continue
                reclaimed += await self._remove(name, force=True)
                deleted.append(name)
        return PruneVolumesResponse(deleted=deleted, space_reclaimed=reclaimed)
