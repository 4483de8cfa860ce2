"""Snapshots: layers unpacked once each (keyed by chain ID), a writable upper per container.

Two drivers behind one class. ``overlay``: each committed snapshot holds one layer's files with
whiteouts in overlayfs form; an active snapshot is an upper and a work folder mounted over the
chain. ``vfs``: each committed snapshot is a full copy of its parent with the layer applied; an
active snapshot is a copy of its parent. Folders are named by short numbers (as containerd does) so
that a long ``lowerdir=`` list stays inside one page.

Every method blocks (syscalls, tree walks, copies): callers run them in a thread.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import shutil
import stat
import tarfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from services.common.atomic import atomic_write
from services.common.dirspread import spread_subfolders
from services.common.engine_files import ENGINE_FILES, MOUNT_POINT_DIRS
from services.common.errors import AlreadyExists, FailedPrecondition, NotFound, SyscallError
from services.common.livetar import add_live
from services.common.untar import OPAQUE_MARKER, OVERLAY_OPAQUE_XATTR, WHITEOUT_PREFIX, WhiteoutMode
from services.highlevel.snapshots import mount as mnt
from services.highlevel.snapshots.discard import FolderDiscarder
from services.highlevel.snapshots.unpack import UnpackLimits, UnpackResult, unpack_layer


class Driver(enum.Enum):
    OVERLAY = "overlay"
    VFS = "vfs"


class SnapshotKind(enum.Enum):
    COMMITTED = "committed"
    ACTIVE = "active"


class ChangeKind(enum.Enum):
    """As ``docker diff`` prints them (and the Engine API's Kind 0/1/2)."""

    MODIFIED = "C"
    ADDED = "A"
    DELETED = "D"


@dataclass(frozen=True, slots=True)
class Change:
    kind: ChangeKind
    path: str


@dataclass(slots=True)
class SnapshotInfo:
    key: str
    id: int
    kind: SnapshotKind
    parent: str | None = None
    created: float = 0.0
    labels: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        # By hand: dataclasses.asdict deep-copies, for every snapshot at every save of the table.
        return {"key": self.key, "id": self.id, "kind": self.kind.value, "parent": self.parent,
                "created": self.created, "labels": dict(self.labels)}

    @classmethod
    def from_json(cls, d: dict[str, object]) -> SnapshotInfo:
        return cls(
            key=str(d["key"]),
            id=int(d["id"]),  # type: ignore[call-overload]
            kind=SnapshotKind(d["kind"]),
            parent=d.get("parent"),  # type: ignore[arg-type]
            created=float(d.get("created", 0.0)),  # type: ignore[arg-type]
            labels=dict(d.get("labels") or {}),  # type: ignore[call-overload]
        )


@dataclass(frozen=True, slots=True)
class MountSpec:
    """What a runtime needs to mount the rootfs itself (containerd's Mount)."""

    type: str
    source: str
    options: list[str]


def overlay_supported(probe_dir: Path) -> bool:
    """Try a real overlay mount once: /proc/filesystems alone does not say it works on this fs."""
    base = probe_dir / f"probe-{os.getpid()}"
    dirs = [base / n for n in ("l", "u", "w", "m")]
    try:
        for d in dirs:
            d.mkdir(parents=True, exist_ok=True)
        mnt.mount_overlay(dirs[3], [dirs[0]], dirs[1], dirs[2], base)
        mnt.umount(dirs[3])
        return True
    except SyscallError:
        return False
    finally:
        shutil.rmtree(base, ignore_errors=True)


class Snapshotter:
    def __init__(self, root: Path, driver: Driver | None = None, limits: UnpackLimits | None = None) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.driver = driver or (Driver.OVERLAY if overlay_supported(root) else Driver.VFS)
        self.base = root / self.driver.value
        self.base.mkdir(exist_ok=True)
        spread_subfolders(self.base)  # one folder per snapshot (common/dirspread.py)
        self.limits = limits or UnpackLimits()
        self._meta_path = root / f"{self.driver.value}.json"
        self._lock = threading.Lock()
        self._save_lock = threading.Lock()  # one metadata writer at a time (see _save)
        self._changes = self._saved = 0
        self._key_locks: dict[str, threading.Lock] = {}
        self._snapshots: dict[str, SnapshotInfo] = {}
        self._next_id = 1
        self.discarder = FolderDiscarder()
        self._load()
        self._drop_unnamed()
        # A temporary folder from an unpack interrupted by a crash is never referenced.
        for stale in self.base.glob("tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        # The metadata's temporary file of a highlevel killed mid-write (common/atomic.py's name for it).
        for stale in root.glob(f".{self._meta_path.name}.*.tmp"):
            stale.unlink(missing_ok=True)

    # -- metadata ---------------------------------------------------------------------------------
    def _load(self) -> None:
        try:
            data = json.loads(self._meta_path.read_text())
        except FileNotFoundError:
            return
        self._next_id = int(data.get("next_id", 1))
        self._snapshots = {k: SnapshotInfo.from_json(v) for k, v in data.get("snapshots", {}).items()}

    def _drop_unnamed(self) -> None:
        """A prepare killed between its folder's mkdir and the metadata's save left a numbered folder
        no snapshot names, and ``next_id`` at that number: every prepare of it failed on the mkdir
        (FileExistsError, a 500 for the creates after a kill-highlevel in the soak). Such a folder
        (never mounted: the mount follows the save) goes; numbers resume above every folder."""
        named = {info.id for info in self._snapshots.values()}
        for entry in self.base.iterdir():
            if entry.name.isdigit():
                self._next_id = max(self._next_id, int(entry.name) + 1)
                if int(entry.name) not in named and not mnt.is_mountpoint(entry / "merged"):
                    shutil.rmtree(entry, ignore_errors=True)

    def _changed(self) -> int:
        """Under ``self._lock``, after a change of the table: its number, for :meth:`_save` once the lock is let go."""
        self._changes += 1
        return self._changes

    def _save(self, change: int) -> None:
        """Returns once the metadata on disk holds ``change`` (and every change before it). Group commit:
        the writer writes the table as it stands, so the prepares of a burst that queued behind one
        write (tmp, fsync, rename) are all covered by the next, instead of one fsync each while
        holding the table's lock."""
        with self._save_lock:
            if self._saved >= change:
                return
            with self._lock:
                covered = self._changes
                data = {"next_id": self._next_id, "snapshots": {k: v.to_json() for k, v in self._snapshots.items()}}
            atomic_write(self._meta_path, json.dumps(data).encode())
            self._saved = covered

    def _alloc(self) -> int:
        with self._lock:
            n = self._next_id
            self._next_id += 1
            return n

    def _key_lock(self, key: str) -> threading.Lock:
        with self._lock:
            return self._key_locks.setdefault(key, threading.Lock())

    def dir(self, info: SnapshotInfo) -> Path:
        return self.base / str(info.id)

    def fs(self, info: SnapshotInfo) -> Path:
        return self.dir(info) / "fs"

    def stat(self, key: str) -> SnapshotInfo:
        with self._lock:
            info = self._snapshots.get(key)
        if info is None:
            raise NotFound(f"snapshot `{key}` not found")
        return info

    def exists(self, key: str) -> bool:
        with self._lock:
            return key in self._snapshots

    def list(self) -> list[SnapshotInfo]:
        with self._lock:
            return list(self._snapshots.values())

    def chain(self, key: str | None) -> list[SnapshotInfo]:
        """The committed snapshots from ``key`` down to the base layer, top first."""
        out: list[SnapshotInfo] = []
        while key is not None:
            info = self.stat(key)
            out.append(info)
            key = info.parent
        return out

    # -- committed layers -------------------------------------------------------------------------
    def unpack(self, chain_id: str, parent: str | None, blob: Path, diff_id: str | None) -> UnpackResult | None:
        """Unpack one layer as the committed snapshot ``chain_id`` (once: returns None if present).

        The layer lands in ``tmp-N`` and is renamed into place only when complete; on any error the
        partial folder is removed.
        """
        with self._key_lock(chain_id):
            if self.exists(chain_id):
                return None
            parent_info = self.stat(parent) if parent else None
            n = self._alloc()
            tmp = self.base / f"tmp-{n}"
            fs = tmp / "fs"
            try:
                tmp.mkdir()
                if self.driver is Driver.VFS and parent_info is not None:
                    copy_tree(self.fs(parent_info), fs)
                else:
                    fs.mkdir()
                mode = WhiteoutMode.OVERLAY if self.driver is Driver.OVERLAY else WhiteoutMode.APPLY
                result = unpack_layer(blob, fs, mode=mode, limits=self.limits, expected_diff_id=diff_id)
                os.rename(tmp, self.base / str(n))
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            info = SnapshotInfo(chain_id, n, SnapshotKind.COMMITTED, parent, time.time())
            with self._lock:
                self._snapshots[chain_id] = info
                change = self._changed()
            self._save(change)
            return result

    # -- active snapshots -------------------------------------------------------------------------
    def prepare(self, key: str, parent: str | None, *, mount: bool = True,
                labels: dict[str, str] | None = None) -> Path:
        """A writable snapshot over ``parent``; returns its root filesystem path (mounted if asked)."""
        with self._key_lock(key):
            if self.exists(key):
                raise AlreadyExists(f"snapshot `{key}` already exists")
            parent_info = self.stat(parent) if parent else None
            if parent_info is not None and parent_info.kind is not SnapshotKind.COMMITTED:
                raise FailedPrecondition(f"snapshot `{parent}` is active: only committed ones can be parents")
            n = self._alloc()
            d = self.base / str(n)
            try:
                d.mkdir()
                if self.driver is Driver.OVERLAY:
                    for sub in ("fs", "work", "merged"):
                        (d / sub).mkdir()
                elif parent_info is not None:
                    copy_tree(self.fs(parent_info), d / "fs")
                else:
                    (d / "fs").mkdir()
                info = SnapshotInfo(key, n, SnapshotKind.ACTIVE, parent, time.time(), dict(labels or {}))
                with self._lock:
                    self._snapshots[key] = info
                    change = self._changed()
                self._save(change)
            except BaseException:
                shutil.rmtree(d, ignore_errors=True)
                raise
            if mount:
                return self.mount(key)
            return self.rootfs_path(info)

    def rootfs_path(self, info: SnapshotInfo) -> Path:
        return self.dir(info) / ("merged" if self.driver is Driver.OVERLAY else "fs")

    def mount_spec(self, key: str) -> MountSpec:
        info = self.stat(key)
        if self.driver is Driver.VFS:
            return MountSpec("bind", str(self.fs(info)), ["rbind", "rw"])
        lowers = self._lowers(info)
        opts = ["lowerdir=" + ":".join(str(p) for p in lowers)]
        if info.kind is SnapshotKind.ACTIVE:
            opts += [f"upperdir={self.fs(info)}", f"workdir={self.dir(info) / 'work'}"]
        return MountSpec("overlay", "overlay", [*opts, "index=off"])

    def _lowers(self, info: SnapshotInfo) -> list[Path]:
        lowers = [self.fs(s) for s in self.chain(info.parent)]
        if not lowers:
            # overlayfs wants a lower folder: an empty one stands for an image with no layers.
            empty = self.base / "empty"
            empty.mkdir(exist_ok=True)
            lowers = [empty]
        return lowers

    def mount(self, key: str) -> Path:
        info = self.stat(key)
        if info.kind is not SnapshotKind.ACTIVE:
            raise FailedPrecondition(f"snapshot `{key}` is committed: prepare an active one to mount")
        target = self.rootfs_path(info)
        if self.driver is Driver.VFS or mnt.is_mountpoint(target):
            return target
        mnt.mount_overlay(target, self._lowers(info), self.fs(info), self.dir(info) / "work", self.base)
        return target

    def unmount(self, key: str) -> None:
        info = self.stat(key)
        if self.driver is Driver.OVERLAY and info.kind is SnapshotKind.ACTIVE:
            target = self.rootfs_path(info)
            while mnt.is_mountpoint(target):
                try:
                    mnt.umount(target)
                except SyscallError:
                    # Busy (a process still has its cwd inside): detach lazily, as containerd does.
                    mnt.umount(target, mnt.MNT_DETACH)

    def remove(self, key: str) -> None:
        with self._key_lock(key):
            info = self.stat(key)
            children = [s.key for s in self.list() if s.parent == key]
            if children:
                raise FailedPrecondition(f"snapshot `{key}` has children: {', '.join(children[:3])}")
            self.unmount(key)
            with self._lock:
                self._snapshots.pop(key, None)
                if info.kind is SnapshotKind.ACTIVE:
                    # A container's key never comes back: its lock goes with it (one lock a launch
                    # stayed for ever: highlevel's object census over a soak). A layer's chain ID
                    # may be unpacked again while a caller still holds the old lock: it stays.
                    self._key_locks.pop(key, None)
                change = self._changed()
            self._save(change)
            self.discarder.discard(self.dir(info))  # after the answer (snapshots/discard.py)

    def gc(self, keep: set[str]) -> list[str]:
        """Remove committed snapshots neither in ``keep`` nor below an active snapshot or a kept one."""
        needed: set[str] = set()
        for s in self.list():
            if s.kind is SnapshotKind.ACTIVE or s.key in keep:
                needed.update(c.key for c in self.chain(s.key) if c.key in self._snapshots)
        removed: list[str] = []
        # Top layers first so that no parent is removed before its child.
        while True:
            victims = [
                s.key for s in self.list()
                if s.key not in needed and not any(c.parent == s.key for c in self.list())
            ]
            if not victims:
                return removed
            for key in victims:
                self.remove(key)
                removed.append(key)

    # -- diff, commit, export ---------------------------------------------------------------------
    def changes(self, key: str, *, of_container: bool = False) -> list[Change]:
        """What an active snapshot changed over its parent; ``of_container``: a container's own changes,
        without the engine's files and bare mount points (common/engine_files.py), as docker diff shows."""
        info = self.stat(key)
        if info.kind is not SnapshotKind.ACTIVE:
            raise FailedPrecondition(f"snapshot `{key}` is not active")
        if self.driver is Driver.OVERLAY:
            changes = _overlay_changes(self.fs(info), self._lowers(info))
        else:
            parent = self.fs(self.stat(info.parent)) if info.parent else None
            changes = _tree_changes(self.fs(info), parent)
        return without_engine_paths(changes) if of_container else changes

    def write_diff_tar(self, key: str, out: Path, *, of_container: bool = False) -> int:
        """The snapshot's changes as a layer tar with whiteouts (for commit; ``of_container`` as in changes);
        returns how many changes it holds."""
        info = self.stat(key)
        changes = self.changes(key, of_container=of_container)
        upper = self.fs(info)
        written = 0
        with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tf:
            for ch in changes:
                rel = ch.path.lstrip("/")
                if ch.kind is ChangeKind.DELETED:
                    parent, _, name = rel.rpartition("/")
                    wh = tarfile.TarInfo((parent + "/" if parent else "") + WHITEOUT_PREFIX + name)
                    wh.mtime = int(time.time())
                    tf.addfile(wh)
                    written += 1
                    continue
                src = upper / rel
                if not add_live(tf, src, rel):
                    continue  # gone since the changes were listed (a commit without pause)
                written += 1
                if src.is_dir() and not src.is_symlink() and _is_opaque(src):
                    op = tarfile.TarInfo(rel + "/" + OPAQUE_MARKER)
                    op.mtime = int(time.time())
                    tf.addfile(op)
        return written

    def write_export_tar(self, key: str, out: Path) -> None:
        """The whole filesystem of a snapshot (docker export)."""
        info = self.stat(key)
        if info.kind is SnapshotKind.ACTIVE:
            src = self.mount(key)
        elif self.driver is Driver.VFS:
            src = self.fs(info)
        else:
            src = None
        with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tf:
            if src is not None:
                _add_tree(tf, src)
                return
            # A committed overlay chain: mount it read-only for the walk.
            tmp = self.base / f"tmp-export-{self._alloc()}"
            tmp.mkdir()
            try:
                lowers = self._lowers(info) if info.parent else []
                lowers = [self.fs(info), *lowers]
                if len(lowers) == 1:
                    _add_tree(tf, lowers[0])
                else:
                    mnt.mount_overlay(tmp, lowers, None, None, self.base)
                    try:
                        _add_tree(tf, tmp)
                    finally:
                        mnt.umount(tmp, mnt.MNT_DETACH)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)


def without_engine_paths(changes: list[Change]) -> list[Change]:
    """Leave out the engine's files, the mount points the runtime added, and then any folder that
    changed only because it holds them (dockerd's init layer keeps all of these out of sight)."""
    paths = {c.path for c in changes}

    def holds_nothing(path: str, among: set[str]) -> bool:
        return not any(p.startswith(path + "/") for p in among)

    hidden = {c.path for c in changes if c.path in ENGINE_FILES
              or (c.path in MOUNT_POINT_DIRS and c.kind is ChangeKind.ADDED and holds_nothing(c.path, paths))}
    if not hidden:
        return changes
    kept = {p for p in paths if p not in hidden}
    folders = {str(parent) for h in hidden for parent in Path(h).parents if str(parent) != "/"}
    kinds = {c.path: c.kind for c in changes}
    # Deepest first, so that a folder emptied of changes frees its own parent in turn.
    for folder in sorted(folders, key=lambda f: f.count("/"), reverse=True):
        if folder in kept and kinds[folder] is not ChangeKind.DELETED and holds_nothing(folder, kept):
            kept.discard(folder)
    return [c for c in changes if c.path in kept]


def _add_tree(tf: tarfile.TarFile, src: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, src)
        for name in sorted(dirnames) + sorted(filenames):
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            add_live(tf, os.path.join(dirpath, name), rel)


def _is_opaque(path: Path) -> bool:
    try:
        return os.getxattr(path, OVERLAY_OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _lower_lookup(lowers: list[Path], rel: str) -> os.stat_result | None:
    for lower in lowers:
        try:
            st = os.lstat(lower / rel)
        except (FileNotFoundError, NotADirectoryError):
            continue
        return None if _is_whiteout(st) else st
    return None


def _overlay_changes(upper: Path, lowers: list[Path]) -> list[Change]:
    out: list[Change] = []
    for dirpath, dirnames, filenames in os.walk(upper):
        rel_dir = os.path.relpath(dirpath, upper)
        for name in dirnames + filenames:
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            st = os.lstat(os.path.join(dirpath, name))
            in_lower = _lower_lookup(lowers, rel) is not None
            if _is_whiteout(st):
                if in_lower:
                    out.append(Change(ChangeKind.DELETED, "/" + rel))
            else:
                out.append(Change(ChangeKind.MODIFIED if in_lower else ChangeKind.ADDED, "/" + rel))
        # An opaque folder's lower children are gone: walk no further than the upper shows.
    return sorted(out, key=lambda c: c.path)


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (
        stat.S_IFMT(a.st_mode) == stat.S_IFMT(b.st_mode)
        and a.st_mode == b.st_mode
        and a.st_uid == b.st_uid
        and a.st_gid == b.st_gid
        and a.st_mtime_ns == b.st_mtime_ns
        and (stat.S_ISDIR(a.st_mode) or a.st_size == b.st_size)
    )


def _tree_changes(active: Path, parent: Path | None) -> list[Change]:
    out: list[Change] = []
    for dirpath, dirnames, filenames in os.walk(active):
        rel_dir = os.path.relpath(dirpath, active)
        for name in dirnames + filenames:
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            st = os.lstat(os.path.join(dirpath, name))
            try:
                pst = os.lstat(parent / rel) if parent else None
            except (FileNotFoundError, NotADirectoryError):
                pst = None
            if pst is None:
                out.append(Change(ChangeKind.ADDED, "/" + rel))
            elif not _same(st, pst) or (
                stat.S_ISLNK(st.st_mode) and os.readlink(active / rel) != os.readlink(parent / rel)  # type: ignore[operator]
            ):
                out.append(Change(ChangeKind.MODIFIED, "/" + rel))
    if parent is not None:
        for dirpath, dirnames, filenames in os.walk(parent):
            rel_dir = os.path.relpath(dirpath, parent)
            for name in list(dirnames) + filenames:
                rel = name if rel_dir == "." else f"{rel_dir}/{name}"
                if not os.path.lexists(active / rel):
                    out.append(Change(ChangeKind.DELETED, "/" + rel))
                    if name in dirnames:
                        dirnames.remove(name)  # report the topmost deletion only, as docker does
    return sorted(out, key=lambda c: c.path)


def copy_tree(src: Path, dst: Path) -> None:
    """A full copy keeping owners, modes, times, symlinks and hard links (the vfs driver)."""
    seen: dict[tuple[int, int], str] = {}
    os.mkdir(dst)
    shutil.copystat(src, dst, follow_symlinks=False)
    st = os.lstat(src)
    os.chown(dst, st.st_uid, st.st_gid)
    for dirpath, dirnames, filenames in os.walk(src):
        rel_dir = os.path.relpath(dirpath, src)
        out_dir = dst if rel_dir == "." else dst / rel_dir
        for name in dirnames + filenames:
            s = os.path.join(dirpath, name)
            d = out_dir / name
            st = os.lstat(s)
            if stat.S_ISDIR(st.st_mode):
                os.mkdir(d)
            elif stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(s), d)
            elif stat.S_ISREG(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and key in seen:
                    os.link(seen[key], d)
                    continue
                shutil.copyfile(s, d, follow_symlinks=False)
                seen[key] = str(d)
            elif stat.S_ISFIFO(st.st_mode):
                os.mkfifo(d)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                os.mknod(d, st.st_mode, st.st_rdev)
            else:
                continue
            os.chown(d, st.st_uid, st.st_gid, follow_symlinks=False)
            if not stat.S_ISLNK(st.st_mode):
                os.chmod(d, stat.S_IMODE(st.st_mode))
            with contextlib.suppress(OSError):
                os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
        # Folder times after their contents were written.
    for dirpath, dirnames, _ in os.walk(src, topdown=False):
        for name in dirnames:
            s = os.path.join(dirpath, name)
            rel = os.path.relpath(s, src)
            st = os.lstat(s)
            os.utime(dst / rel, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
