"""Safe extraction of a tar stream into a root: the one way Skiff writes an archive's entries into
a tree it does not trust, whether an image layer (highlevel's unpack) or ``docker cp`` into a
container, running or not (the daemon's archive service). Our own walk, never ``extractall``.

Every entry is placed relative to an open directory descriptor of its folder. Parent folders are
resolved one component at a time, each looked up below the descriptor of the one before and
opened with O_NOFOLLOW (a folder swapped for a symlink meanwhile fails the open instead of
leading out), following symlinks only *within* the root (an absolute or
``..``-climbing link target is clamped at the root, as Docker's FollowSymlinkInScope and its
chrooted untar do), and the entry itself is never followed: an existing entry of another type is
removed first, so a symlink planted by an earlier entry (or by the running container, between two
entries) is replaced, not written through. ``..`` in a name or a hard-link target is refused
outright; symlinks are stored as they are (they are data: only the walk must never follow one
out); device nodes are skipped unless allowed; setuid/setgid bits are dropped unless allowed;
owners are the tar's numeric ids, never names looked up on the host.

stdlib only; blocking (call it in a thread).
"""

from __future__ import annotations

import contextlib
import enum
import os
import stat
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass

from services.common.errors import InvalidArgument

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OVERLAY_OPAQUE_XATTR = "trusted.overlay.opaque"
MAX_SYMLINK_HOPS = 40
CHUNK = 1 << 20


class UnsafeArchive(InvalidArgument):
    """An entry that would write outside the root."""


class CorruptArchive(InvalidArgument):
    """An entry whose data is missing or short."""


class WhiteoutMode(enum.Enum):
    """What ``.wh.`` entries mean: overlayfs markers in a layer of its own, applied (a vfs layer),
    or nothing special (``docker cp``: ordinary files)."""

    OVERLAY = "overlay"
    APPLY = "apply"
    NONE = "none"


@dataclass(frozen=True, slots=True)
class ExtractOptions:
    whiteouts: WhiteoutMode = WhiteoutMode.NONE
    allow_setuid: bool = False
    allow_devices: bool = False
    # Docker's NoOverwriteDirNonDir (docker cp's default): a folder never replaces a non-folder,
    # nor a non-folder a folder.
    no_overwrite_dir_non_dir: bool = False


def split_name(name: str, what: str) -> list[str]:
    """A tar name as components; absolute names are taken relative to the root, ``..`` is refused."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive(f"{what} `{name}` climbs out of the root with `..`")
    return parts


def _open_child(dir_fd: int, name: str) -> int:
    return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)


def open_in_root(root_fd: int, parts: list[str], *, create: bool = False) -> tuple[list[str], int]:
    """The folder ``parts`` names below ``root_fd``, as the container sees it: its real path
    (components) and an open descriptor of it (the caller closes it).

    Symlinks on the way are followed but clamped inside the root (an absolute target restarts at
    the root, ``..`` stops there); missing folders are made (0755, as Docker does) with ``create``,
    else FileNotFoundError. Every step is one name looked up below the descriptor of the folder
    before it, opened with O_NOFOLLOW: a running container that swaps a folder for a symlink
    meanwhile makes the open fail (ELOOP), it never sends the walk out of the root.
    """
    resolved: list[str] = []
    pending = list(parts)
    hops = 0
    fd = os.dup(root_fd)
    try:
        while pending:
            comp = pending.pop(0)
            if comp in ("", "."):
                continue
            if comp == "..":
                if resolved:
                    resolved.pop()
                    os.close(fd)
                    fd = os.dup(root_fd)
                    for name in resolved:
                        child = _open_child(fd, name)
                        os.close(fd)
                        fd = child
                continue
            try:
                st = os.lstat(comp, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(comp, 0o755, dir_fd=fd)
                st = os.lstat(comp, dir_fd=fd)
            if stat.S_ISLNK(st.st_mode):
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    raise UnsafeArchive(f"too many symlinks resolving `{'/'.join(parts)}`")
                target = os.readlink(comp, dir_fd=fd)
                if target.startswith("/"):
                    resolved = []
                    os.close(fd)
                    fd = os.dup(root_fd)
                pending = [p for p in target.split("/") if p] + pending
            elif stat.S_ISDIR(st.st_mode):
                child = _open_child(fd, comp)
                os.close(fd)
                fd = child
                resolved.append(comp)
            else:
                raise UnsafeArchive(f"`{'/'.join(parts)}`: `{'/'.join([*resolved, comp])}` is not a directory")
        return resolved, fd
    except BaseException:
        os.close(fd)
        raise


class RootExtractor:
    """Writes tar entries under ``root``, below the folder ``into`` (components inside the root,
    resolved as the entries' parents are: symlinks followed within the root only)."""

    def __init__(self, root: str | os.PathLike[str], options: ExtractOptions, into: Iterable[str] = ()) -> None:
        self.options = options
        self.into = [p for p in into if p not in ("", ".")]
        if ".." in self.into:
            raise UnsafeArchive(f"`{'/'.join(self.into)}` climbs out of the root with `..`")
        self.root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        self.dir_times: list[tuple[list[str], float]] = []
        self.written: set[tuple[str, ...]] = set()
        self.skipped: list[str] = []

    def close(self) -> None:
        os.close(self.root_fd)

    def __enter__(self) -> RootExtractor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open_dir(self, parts: list[str], create: bool) -> tuple[list[str], int]:
        return open_in_root(self.root_fd, parts, create=create)

    @staticmethod
    def _remove(name: str, pfd: int, keep_dir: bool) -> bool:
        """Clear the way for a new entry; returns True if a folder was kept (dir over dir)."""
        try:
            st = os.lstat(name, dir_fd=pfd)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode) and keep_dir:
            return True
        remove_entry(name, pfd, st)
        return False

    # -- checks before writing ----------------------------------------------------------------
    def check_no_overwrite(self, members: Iterable[tarfile.TarInfo]) -> None:
        """Docker's noOverwriteDirNonDir over the whole archive, before anything is written."""
        for member in members:
            parts = split_name(member.name, "entry")
            if not parts:
                continue
            *dir_parts, base = parts
            try:
                _, pfd = self.open_dir([*self.into, *dir_parts], create=False)
            except (FileNotFoundError, NotADirectoryError, UnsafeArchive):
                continue
            try:
                st = os.lstat(base, dir_fd=pfd)
            except FileNotFoundError:
                continue
            finally:
                os.close(pfd)
            is_dir = stat.S_ISDIR(st.st_mode)
            if member.isdir() and not is_dir:
                raise InvalidArgument(f'cannot overwrite non-directory "{member.name}" with directory')
            if not member.isdir() and is_dir:
                raise InvalidArgument(f'cannot overwrite directory "{member.name}" with non-directory')

    # -- entries ------------------------------------------------------------------------------
    def entry(self, tf: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        parts = split_name(member.name, "entry")
        if not parts:
            # The target folder itself ("./"): only its metadata, never replaced.
            if member.isdir():
                _, pfd = self.open_dir(self.into, create=True)
                try:
                    self._meta(".", pfd, member, is_link=False)
                finally:
                    os.close(pfd)
            return
        *dir_parts, base = parts
        if base.startswith(WHITEOUT_PREFIX) and self.options.whiteouts is not WhiteoutMode.NONE:
            self._whiteout([*self.into, *dir_parts], base)
            return
        resolved, pfd = self.open_dir([*self.into, *dir_parts], create=True)
        try:
            self._place(tf, member, resolved, base, pfd)
        finally:
            os.close(pfd)
        self.written.add(tuple([*resolved, base]))

    def _place(self, tf: tarfile.TarFile, m: tarfile.TarInfo, resolved: list[str], base: str, pfd: int) -> None:
        if (m.ischr() or m.isblk()) and not self.options.allow_devices:
            self.skipped.append(m.name)
            return
        kept_dir = self._remove(base, pfd, keep_dir=m.isdir())
        mode = self._mode(m)
        if m.isdir():
            if not kept_dir:
                os.mkdir(base, 0o700, dir_fd=pfd)
            self._meta(base, pfd, m, is_link=False)
            self.dir_times.append(([*resolved, base], m.mtime))
        elif m.isreg():
            fd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=pfd)
            with os.fdopen(fd, "wb") as out:
                src = tf.extractfile(m)
                if src is None:
                    raise CorruptArchive(f"entry `{m.name}`: no data")
                remaining = m.size
                while remaining > 0:
                    block = src.read(min(CHUNK, remaining))
                    if not block:
                        raise CorruptArchive(f"entry `{m.name}`: truncated archive")
                    out.write(block)
                    remaining -= len(block)
                os.fchown(fd, m.uid, m.gid)
                # chmod after chown: chown clears setuid bits.
                os.fchmod(fd, mode)
            os.utime(base, (m.mtime, m.mtime), dir_fd=pfd, follow_symlinks=False)
        elif m.issym():
            os.symlink(m.linkname, base, dir_fd=pfd)
            self._meta(base, pfd, m, is_link=True)
        elif m.islnk():
            self._hardlink(m, base, pfd)
        elif m.isfifo():
            os.mkfifo(base, 0o600, dir_fd=pfd)
            self._meta(base, pfd, m, is_link=False)
        elif m.ischr() or m.isblk():
            kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK
            os.mknod(base, kind | 0o600, os.makedev(m.devmajor, m.devminor), dir_fd=pfd)
            self._meta(base, pfd, m, is_link=False)
        else:
            self.skipped.append(m.name)

    def _hardlink(self, m: tarfile.TarInfo, base: str, pfd: int) -> None:
        target = split_name(m.linkname, "hard link target")
        if not target:
            raise UnsafeArchive(f"hard link `{m.name}` to the root folder")
        *tdir, tbase = target
        try:
            _, tfd = self.open_dir([*self.into, *tdir], create=False)
        except (FileNotFoundError, NotADirectoryError):
            raise UnsafeArchive(f"hard link `{m.name}` → `{m.linkname}`: target is not in this archive") from None
        try:
            try:
                st = os.lstat(tbase, dir_fd=tfd)
            except FileNotFoundError:
                raise UnsafeArchive(
                    f"hard link `{m.name}` → `{m.linkname}`: target is not in this archive"
                ) from None
            if stat.S_ISDIR(st.st_mode):
                raise UnsafeArchive(f"hard link `{m.name}` → `{m.linkname}`: target is a folder")
            os.link(tbase, base, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
        finally:
            os.close(tfd)

    def _mode(self, m: tarfile.TarInfo) -> int:
        mode = m.mode & 0o7777
        if not self.options.allow_setuid:
            mode &= ~(stat.S_ISUID | stat.S_ISGID) if not m.isdir() else ~stat.S_ISUID
        return mode

    def _meta(self, name: str, pfd: int, m: tarfile.TarInfo, *, is_link: bool) -> None:
        os.chown(name, m.uid, m.gid, dir_fd=pfd, follow_symlinks=False)
        if not is_link:
            os.chmod(name, self._mode(m), dir_fd=pfd)
        os.utime(name, (m.mtime, m.mtime), dir_fd=pfd, follow_symlinks=False)

    def _whiteout(self, dir_parts: list[str], base: str) -> None:
        overlay = self.options.whiteouts is WhiteoutMode.OVERLAY
        try:
            resolved, pfd = self.open_dir(dir_parts, create=overlay)
        except FileNotFoundError:
            return  # applying a whiteout below a folder that does not exist: nothing to hide
        try:
            if base == OPAQUE_MARKER:
                if overlay:
                    os.setxattr(pfd, OVERLAY_OPAQUE_XATTR, b"y")
                else:
                    for child in os.listdir(pfd):
                        if tuple([*resolved, child]) not in self.written:
                            self._remove(child, pfd, keep_dir=False)
                return
            if base.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
                return  # other AUFS metadata (.wh..wh.plnk, …): meaningless here
            name = base[len(WHITEOUT_PREFIX) :]
            if name in ("", ".", "..") or "/" in name:
                raise UnsafeArchive(f"whiteout `{base}` names no entry")
            self._remove(name, pfd, keep_dir=False)
            if overlay:
                os.mknod(name, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=pfd)
        finally:
            os.close(pfd)

    def finish(self) -> None:
        # Folder times last: creating their children changed them.
        for parts, mtime in reversed(self.dir_times):
            with contextlib.suppress(FileNotFoundError):
                os.utime("/".join(parts), (mtime, mtime), dir_fd=self.root_fd, follow_symlinks=False)


def rmtree_fd(dir_fd: int) -> None:
    """Empty a folder given by descriptor without ever following a symlink."""
    for name in os.listdir(dir_fd):
        remove_entry(name, dir_fd)


def remove_entry(name: str, dir_fd: int, st: os.stat_result | None = None) -> None:
    """Remove ``name`` below ``dir_fd``, a folder with all it holds; a symlink is removed, never followed."""
    st = st or os.lstat(name, dir_fd=dir_fd)
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=dir_fd)
        return
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        rmtree_fd(fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dir_fd)


def extract_archive(archive: str | os.PathLike[str], root: str | os.PathLike[str], options: ExtractOptions,
                    into: Iterable[str] = ()) -> list[str]:
    """Extract a tar file (plain or compressed, as tarfile detects) into ``root``/``into``; the names
    skipped (devices). A malformed archive is InvalidArgument; ``into`` must exist. Every name is
    checked before the first is written: a refused archive leaves nothing half-extracted."""
    try:
        with tarfile.open(archive, "r:*") as tf, RootExtractor(root, options, into) as ex:
            members = tf.getmembers()
            for member in members:
                split_name(member.name, "entry")
                if member.islnk():
                    split_name(member.linkname, "hard link target")
            if options.no_overwrite_dir_non_dir:
                ex.check_no_overwrite(members)
            for member in tf:
                ex.entry(tf, member)
            ex.finish()
            return ex.skipped
    except (tarfile.TarError, EOFError) as exc:
        raise InvalidArgument(f"invalid archive: {exc}") from None
