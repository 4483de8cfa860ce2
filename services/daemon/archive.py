"""docker cp, export, diff and system df: the daemon reads and writes a container's files.

Paths are resolved inside the container's view: a volume or bind mounted at the path is used in
place of the rootfs, and symlinks are followed as the container would, never out of its root.
An archive put into a container (running or not) is written by services.common.untar, the one
safe extraction into a root: fd-relative, no ``..``, never through a symlink out of the root, even
one the container plants while it runs. Tar work (blocking) runs in threads; data goes through a
temporary file in ``<run>/daemon/tmp``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import posixpath
import secrets
import stat
import tarfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

from services.common.errors import InvalidArgument, NotFound
from services.common.grpc import call, grpc_errors
from services.common.livetar import add_tree_live
from services.common.untar import ExtractOptions, WhiteoutMode, extract_archive, open_in_root
from services.daemon.containers import ContainerManager
from services.daemon.volumes import VolumesService, VolumeStore, tree_size
from services.gen.skiff import highlevel
from services.gen.skiff.daemon.v1 import (
    ArchiveBase,
    ArchiveChunk,
    ArchivePathRequest,
    Change,
    ChangesResponse,
    ContainerUsage,
    DiskUsageResponse,
    MountPoint,
    PathStat,
    VolumesEmpty,
)

hl = highlevel.v1
CHUNK = 256 * 1024
MAX_LINKS = 40

# Go's os.FileMode type bits, which the CLI reads from X-Docker-Container-Path-Stat.
GO_DIR, GO_SYMLINK, GO_DEVICE, GO_PIPE, GO_SOCKET = 1 << 31, 1 << 27, 1 << 26, 1 << 25, 1 << 24
GO_SETUID, GO_SETGID, GO_CHARDEV, GO_STICKY = 1 << 23, 1 << 22, 1 << 21, 1 << 20


def go_mode(mode: int) -> int:
    bits = mode & 0o777
    bits |= GO_SETUID if mode & stat.S_ISUID else 0
    bits |= GO_SETGID if mode & stat.S_ISGID else 0
    bits |= GO_STICKY if mode & stat.S_ISVTX else 0
    if stat.S_ISDIR(mode):
        bits |= GO_DIR
    elif stat.S_ISLNK(mode):
        bits |= GO_SYMLINK
    elif stat.S_ISFIFO(mode):
        bits |= GO_PIPE
    elif stat.S_ISSOCK(mode):
        bits |= GO_SOCKET
    elif stat.S_ISCHR(mode):
        bits |= GO_DEVICE | GO_CHARDEV
    elif stat.S_ISBLK(mode):
        bits |= GO_DEVICE
    return bits


def _base(rootfs: str, points: list[MountPoint], container_path: str) -> tuple[str, str]:
    """The host folder that holds ``container_path`` (the deepest mount over it) and the rest."""
    best: MountPoint | None = None
    for p in points:
        under = container_path == p.destination or container_path.startswith(p.destination.rstrip("/") + "/")
        if p.type in ("bind", "volume") and under and (best is None or len(p.destination) > len(best.destination)):
            best = p
    if best is None:
        return rootfs, container_path
    return best.source, "/" + container_path[len(best.destination):].lstrip("/")


def resolve(rootfs: str, points: list[MountPoint], path: str, follow_last: bool) -> str:
    """The host path of ``path`` as the container sees it; links resolved inside the root (blocking)."""
    base, rest = _base(rootfs, points, container_path(rootfs, points, path, follow_last))
    return os.path.join(base, rest.lstrip("/")) if rest != "/" else base


def extraction_root(rootfs: str, points: list[MountPoint], path: str) -> tuple[str, list[str]]:
    """Where an archive put at ``path`` goes: the host folder of the root that holds it (the rootfs,
    or the volume or bind mounted over it) and the components of ``path`` inside that root."""
    base, rest = _base(rootfs, points, container_path(rootfs, points, path, True))
    return base, [c for c in rest.split("/") if c]


def source_root(rootfs: str, points: list[MountPoint], path: str) -> tuple[str, list[str]]:
    """What docker cp reads for ``path``: the root that holds it and its components there (the
    last one not followed: a symlink is copied as a link, as Docker does)."""
    base, rest = _base(rootfs, points, container_path(rootfs, points, path, False))
    parts = [c for c in rest.split("/") if c]
    if not parts and not os.path.isdir(base):  # a file mounted by itself (-v /host/file:/x, /etc/hosts)
        return os.path.dirname(base), [os.path.basename(base)]
    return base, parts


def container_path(rootfs: str, points: list[MountPoint], path: str, follow_last: bool) -> str:
    """``path`` with its symlinks resolved as the container would (blocking)."""
    if not path:
        raise InvalidArgument("path is required")
    if not path.startswith("/"):
        path = "/" + path
    pending = [c for c in path.split("/") if c]
    current = "/"
    links = 0
    while pending:
        name = pending.pop(0)
        if name == ".":
            continue
        if name == "..":
            current = posixpath.dirname(current.rstrip("/")) or "/"
            continue
        candidate = posixpath.join(current, name)
        base, rest = _base(rootfs, points, candidate)
        host = os.path.join(base, rest.lstrip("/"))
        if (pending or follow_last) and os.path.islink(host):
            links += 1
            if links > MAX_LINKS:
                raise InvalidArgument(f"too many links in {path}")
            target = os.readlink(host)
            # An absolute link starts again at the container's root; a relative one at its folder.
            pending = [c for c in target.split("/") if c] + pending
            current = "/" if target.startswith("/") else current
            continue
        current = candidate
    return current


def path_stat(host: str, name: str, container: str) -> PathStat:
    try:
        st = os.lstat(host)
    except FileNotFoundError:
        raise NotFound(f"Could not find the file {name} in container {container}") from None
    link = os.readlink(host) if stat.S_ISLNK(st.st_mode) else ""
    mtime = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(st.st_mtime)) + "Z"
    return PathStat(name=posixpath.basename(name.rstrip("/")) or "/", size=st.st_size, mode=go_mode(st.st_mode),
                    mtime=mtime, link_target=link)


def write_tar(root: str, parts: list[str], arcname: str, out: str) -> None:
    """``root``/``parts`` (links already resolved as the container sees them) into a tar (blocking).

    The container may be running: files may change or vanish while they are read, and any folder
    may be swapped for a symlink, which the host would resolve against its own root. So the folder
    holding the entry is opened inside ``root`` (open_in_root: no step follows a link out) and the
    tree below it is read through descriptors (add_tree_live with dir_fd)."""
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        *folder, name = parts or ["."]
        _, folder_fd = open_in_root(root_fd, folder)
    finally:
        os.close(root_fd)
    try:
        with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
            add_tree_live(tar, name, arcname, dir_fd=folder_fd)
    finally:
        os.close(folder_fd)


def extract_tar(archive: str, root: str, no_overwrite_dir_non_dir: bool = False, into: list[str] | None = None,
                ) -> None:
    """docker cp's untar into ``root``/``into`` (blocking): numeric owners and modes kept as Docker
    keeps them, devices skipped, nothing written outside ``root``."""
    options = ExtractOptions(whiteouts=WhiteoutMode.NONE, allow_setuid=True,
                             no_overwrite_dir_non_dir=no_overwrite_dir_non_dir)
    extract_archive(archive, root, options, into or ())


async def stream_file(path: str) -> AsyncIterator[bytes]:
    with open(path, "rb") as f:
        while chunk := await asyncio.to_thread(f.read, CHUNK):
            yield chunk


class ArchiveService(ArchiveBase):
    def __init__(self, manager: ContainerManager, store: VolumeStore, volumes: VolumesService, tmp: Path) -> None:
        self.manager = manager
        self.store = store
        self.volumes = volumes
        self.tmp = tmp

    def _temp(self) -> str:
        self.tmp.mkdir(parents=True, exist_ok=True)
        return str(self.tmp / f"{secrets.token_hex(8)}.tar")

    def _where(self, ref: str) -> tuple[str, list[MountPoint]]:
        record = self.manager.get(ref).record
        # The engine's /etc/hosts, /etc/hostname and /etc/resolv.conf are bind-mounted over the image's:
        # docker cp reads and writes the container's own, as dockerd does.
        s = record.network_settings
        files = {"/etc/hosts": s.hosts_path, "/etc/hostname": s.hostname_path, "/etc/resolv.conf": s.resolv_conf_path}
        network_files = [MountPoint(type="bind", source=source, destination=dest, rw=True)
                         for dest, source in files.items() if source and os.path.exists(source)]
        return record.rootfs, [*network_files, *record.mount_points]

    @grpc_errors
    async def stat(self, archive_path_request: ArchivePathRequest) -> PathStat:
        r = archive_path_request
        rootfs, points = self._where(r.id)
        host = await asyncio.to_thread(resolve, rootfs, points, r.path, False)
        return await asyncio.to_thread(path_stat, host, r.path, r.id)

    @grpc_errors
    async def get(self, archive_path_request: ArchivePathRequest) -> AsyncIterator[ArchiveChunk]:
        r = archive_path_request
        rootfs, points = self._where(r.id)
        host = await asyncio.to_thread(resolve, rootfs, points, r.path, False)
        info = await asyncio.to_thread(path_stat, host, r.path, r.id)
        # "dir/." copies the folder's content: its entries are named from the folder itself.
        arcname = "." if r.path.endswith("/.") else info.name
        root, parts = await asyncio.to_thread(source_root, rootfs, points, r.path)
        out = self._temp()
        try:
            await asyncio.to_thread(write_tar, root, parts, arcname, out)
            yield ArchiveChunk(stat=info)
            async for chunk in stream_file(out):
                yield ArchiveChunk(data=chunk)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(out)

    @grpc_errors
    async def put(self, stream: AsyncIterator[ArchiveChunk]) -> VolumesEmpty:
        first: ArchiveChunk | None = None
        out = self._temp()
        try:
            with open(out, "wb") as f:
                async for chunk in stream:
                    if first is None:
                        first = chunk
                    if chunk.data:
                        await asyncio.to_thread(f.write, chunk.data)
            if first is None:
                raise InvalidArgument("empty request")
            rootfs, points = self._where(first.id)
            root, into = await asyncio.to_thread(extraction_root, rootfs, points, first.path)
            dest = os.path.join(root, *into)
            if not os.path.exists(dest):
                raise NotFound(f"Could not find the file {first.path} in container {first.id}")
            if not os.path.isdir(dest):
                raise InvalidArgument(f"extraction point is not a directory: {first.path}")
            await asyncio.to_thread(extract_tar, out, root, first.no_overwrite_dir_non_dir, into)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(out)
        return VolumesEmpty()

    @grpc_errors
    async def export(self, archive_path_request: ArchivePathRequest) -> AsyncIterator[ArchiveChunk]:
        record = self.manager.get(archive_path_request.id).record
        out = self._temp()
        try:
            await call(self.manager.snapshots.export(hl.ExportSnapshotRequest(key=record.id, path=out)))
            async for chunk in stream_file(out):
                yield ArchiveChunk(data=chunk)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(out)

    @grpc_errors
    async def changes(self, archive_path_request: ArchivePathRequest) -> ChangesResponse:
        record = self.manager.get(archive_path_request.id).record
        diff = await call(self.manager.snapshots.diff(hl.SnapshotKeyRequest(key=record.id)))
        return ChangesResponse(changes=[Change(path=c.path, kind=c.kind_code) for c in diff.changes])

    @grpc_errors
    async def disk_usage(self, volumes_empty: VolumesEmpty) -> DiskUsageResponse:
        volumes = []
        for name in await asyncio.to_thread(self.store.names):
            try:
                volume = await asyncio.to_thread(self.store.get, name)
            except NotFound:
                continue
            volume.size = await asyncio.to_thread(tree_size, Path(volume.mountpoint))
            volume.ref_count = len(self.volumes.users(name))
            volumes.append(volume)
        # Sizes of the writable layers need highlevel's upper-layer bytes: reported as 0 until it has them.
        containers = [ContainerUsage(id=cid, size_rw=0, size_root_fs=0) for cid in list(self.manager.entries)]
        return DiskUsageResponse(volumes=volumes, containers=containers)
