"""Safe layer extraction: our own walk over tarfile, never ``extractall``.

Every entry is placed relative to an open directory descriptor of the target. Parent folders are
resolved one component at a time, following symlinks only *within* the target (an absolute or
``..``-climbing link target is clamped at the root, as Docker's FollowSymlinkInScope does), and the
entry itself is never followed: an existing entry of another type is removed first, so a symlink
planted by an earlier entry is replaced, not written through. ``..`` in a name or a hard-link
target is refused outright; device nodes are skipped; setuid/setgid bits are dropped unless allowed;
the decompressed size and ratio are capped (decompression bombs); the uncompressed stream is hashed
so the diff ID is checked against the image config.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import gzip
import hashlib
import io
import os
import shutil
import stat
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from services.common.errors import FailedPrecondition, InvalidArgument

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OVERLAY_OPAQUE_XATTR = "trusted.overlay.opaque"
MAX_SYMLINK_HOPS = 40
_CHUNK = 1 << 20


class WhiteoutMode(enum.Enum):
    """How whiteouts are written: as overlayfs markers in a layer of its own, or applied (vfs)."""

    OVERLAY = "overlay"
    APPLY = "apply"


class Compression(enum.Enum):
    NONE = "none"
    GZIP = "gzip"
    ZSTD = "zstd"


class UnsafeLayer(InvalidArgument):
    """A layer entry that would write outside its target, or a bomb."""


class CorruptLayer(InvalidArgument):
    """A layer that does not decompress or parse, or whose diff ID is not the announced one."""


@dataclass(frozen=True, slots=True)
class UnpackLimits:
    max_bytes: int = 32 << 30
    max_ratio: float = 200.0
    # Below this many bytes the ratio is not checked: tiny layers of zeros compress absurdly well.
    ratio_floor: int = 16 << 20
    allow_setuid: bool = False
    allow_devices: bool = False


@dataclass(slots=True)
class UnpackResult:
    diff_id: str
    size: int
    skipped: list[str] = field(default_factory=list)


def detect_compression(head: bytes) -> Compression:
    if head[:2] == b"\x1f\x8b":
        return Compression.GZIP
    if head[:4] == b"\x28\xb5\x2f\xfd":
        return Compression.ZSTD
    return Compression.NONE


def zstd_reader(raw: IO[bytes]) -> IO[bytes]:
    """zstd is optional: only if a zstd module is importable, else a clear error."""
    try:
        import zstandard  # type: ignore[import-not-found]
    except ImportError:
        try:
            from compression import zstd  # type: ignore[import-not-found]
        except ImportError:
            raise FailedPrecondition(
                "layer is zstd-compressed but no zstd module is installed (pip install zstandard)"
            ) from None
        return zstd.ZstdFile(raw)  # type: ignore[no-any-return]
    return zstandard.ZstdDecompressor().stream_reader(raw)  # type: ignore[no-any-return]


def open_decompressed(raw: IO[bytes]) -> IO[bytes]:
    head = raw.read(4)
    raw.seek(0)
    kind = detect_compression(head)
    if kind is Compression.GZIP:
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    if kind is Compression.ZSTD:
        return zstd_reader(raw)
    return raw


class _Metered(io.RawIOBase):
    """Counts and hashes the uncompressed stream and stops a bomb as soon as it shows."""

    def __init__(self, inner: IO[bytes], compressed_size: int, limits: UnpackLimits, name: str) -> None:
        self._inner = inner
        self._compressed = max(compressed_size, 1)
        self._limits = limits
        self._name = name
        self.total = 0
        self.hash = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buf: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self._inner.read(len(buf))
        n = len(data)
        buf[:n] = data
        self.total += n
        self.hash.update(data)
        if self.total > self._limits.max_bytes:
            raise UnsafeLayer(f"layer {self._name}: more than {self._limits.max_bytes} bytes uncompressed")
        if self.total > self._limits.ratio_floor and self.total / self._compressed > self._limits.max_ratio:
            raise UnsafeLayer(
                f"layer {self._name}: decompression ratio above {self._limits.max_ratio:.0f}:1 "
                f"({self.total} bytes from {self._compressed}): refusing a decompression bomb"
            )
        return n


def _split(name: str, what: str) -> list[str]:
    """A tar name as components; absolute names are taken relative to the root, ``..`` is refused."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeLayer(f"{what} `{name}` climbs out of the root with `..`")
    return parts


class _Extractor:
    def __init__(self, root: Path, mode: WhiteoutMode, limits: UnpackLimits) -> None:
        self.root = root
        self.mode = mode
        self.limits = limits
        self.root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        self.dir_times: list[tuple[list[str], float]] = []
        self.written: set[tuple[str, ...]] = set()
        self.skipped: list[str] = []

    def close(self) -> None:
        os.close(self.root_fd)

    # -- resolution ---------------------------------------------------------------------------
    def _resolve(self, parts: list[str], create: bool) -> list[str]:
        """The real path (components) of a folder, symlinks followed but clamped inside the root."""
        resolved: list[str] = []
        pending = list(parts)
        hops = 0
        while pending:
            comp = pending.pop(0)
            if comp in ("", "."):
                continue
            if comp == "..":
                if resolved:
                    resolved.pop()
                continue
            rel = "/".join([*resolved, comp])
            try:
                st = os.lstat(rel, dir_fd=self.root_fd)
            except FileNotFoundError:
                if not create:
                    raise
                # Docker creates missing parents with 0755, owned by root.
                os.mkdir(rel, 0o755, dir_fd=self.root_fd)
                resolved.append(comp)
                continue
            if stat.S_ISLNK(st.st_mode):
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    raise UnsafeLayer(f"too many symlinks resolving `{'/'.join(parts)}`")
                target = os.readlink(rel, dir_fd=self.root_fd)
                if target.startswith("/"):
                    resolved = []
                pending = [p for p in target.split("/") if p] + pending
            elif stat.S_ISDIR(st.st_mode):
                resolved.append(comp)
            else:
                raise UnsafeLayer(f"`{'/'.join(parts)}`: `{rel}` is not a directory")
        return resolved

    def _open_dir(self, resolved: list[str]) -> int:
        # Each component was checked to be a real folder just above; O_NOFOLLOW guards the last.
        rel = "/".join(resolved) or "."
        return os.open(rel, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.root_fd)

    @staticmethod
    def _remove(name: str, pfd: int, keep_dir: bool) -> bool:
        """Clear the way for a new entry; returns True if a folder was kept (dir over dir)."""
        try:
            st = os.lstat(name, dir_fd=pfd)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return True
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
            try:
                _rmtree_fd(fd)
            finally:
                os.close(fd)
            os.rmdir(name, dir_fd=pfd)
        else:
            os.unlink(name, dir_fd=pfd)
        return False

    # -- entries ------------------------------------------------------------------------------
    def entry(self, tf: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        parts = _split(member.name, "entry")
        if not parts:
            # The root itself ("./"): only its metadata, never replaced.
            if member.isdir():
                self._meta(".", self.root_fd, member, is_link=False)
            return
        *dir_parts, base = parts
        if base.startswith(WHITEOUT_PREFIX):
            self._whiteout(dir_parts, base)
            return
        resolved = self._resolve(dir_parts, create=True)
        pfd = self._open_dir(resolved)
        try:
            self._place(tf, member, resolved, base, pfd)
        finally:
            os.close(pfd)
        self.written.add(tuple([*resolved, base]))

    def _place(self, tf: tarfile.TarFile, m: tarfile.TarInfo, resolved: list[str], base: str, pfd: int) -> None:
        if (m.ischr() or m.isblk()) and not self.limits.allow_devices:
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
                    raise CorruptLayer(f"entry `{m.name}`: no data")
                remaining = m.size
                while remaining > 0:
                    block = src.read(min(_CHUNK, remaining))
                    if not block:
                        raise CorruptLayer(f"entry `{m.name}`: truncated layer")
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
        target = _split(m.linkname, "hard link target")
        if not target:
            raise UnsafeLayer(f"hard link `{m.name}` to the root folder")
        *tdir, tbase = target
        try:
            tresolved = self._resolve(tdir, create=False)
            tfd = self._open_dir(tresolved)
        except (FileNotFoundError, NotADirectoryError):
            raise UnsafeLayer(f"hard link `{m.name}` → `{m.linkname}`: target is not in this layer") from None
        try:
            try:
                st = os.lstat(tbase, dir_fd=tfd)
            except FileNotFoundError:
                raise UnsafeLayer(
                    f"hard link `{m.name}` → `{m.linkname}`: target is not in this layer"
                ) from None
            if stat.S_ISDIR(st.st_mode):
                raise UnsafeLayer(f"hard link `{m.name}` → `{m.linkname}`: target is a folder")
            os.link(tbase, base, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
        finally:
            os.close(tfd)

    def _mode(self, m: tarfile.TarInfo) -> int:
        mode = m.mode & 0o7777
        if not self.limits.allow_setuid:
            mode &= ~(stat.S_ISUID | stat.S_ISGID) if not m.isdir() else ~stat.S_ISUID
        return mode

    def _meta(self, name: str, pfd: int, m: tarfile.TarInfo, *, is_link: bool) -> None:
        os.chown(name, m.uid, m.gid, dir_fd=pfd, follow_symlinks=False)
        if not is_link:
            os.chmod(name, self._mode(m), dir_fd=pfd)
        os.utime(name, (m.mtime, m.mtime), dir_fd=pfd, follow_symlinks=False)

    def _whiteout(self, dir_parts: list[str], base: str) -> None:
        try:
            resolved = self._resolve(dir_parts, create=self.mode is WhiteoutMode.OVERLAY)
        except FileNotFoundError:
            return  # applying a whiteout below a folder that does not exist: nothing to hide
        pfd = self._open_dir(resolved)
        try:
            if base == OPAQUE_MARKER:
                if self.mode is WhiteoutMode.OVERLAY:
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
                raise UnsafeLayer(f"whiteout `{base}` names no entry")
            if self.mode is WhiteoutMode.OVERLAY:
                self._remove(name, pfd, keep_dir=False)
                os.mknod(name, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=pfd)
            else:
                self._remove(name, pfd, keep_dir=False)
        finally:
            os.close(pfd)

    def finish(self) -> None:
        # Folder times last: creating their children changed them.
        for parts, mtime in reversed(self.dir_times):
            with contextlib.suppress(FileNotFoundError):
                os.utime("/".join(parts), (mtime, mtime), dir_fd=self.root_fd, follow_symlinks=False)


def _rmtree_fd(dir_fd: int) -> None:
    """Empty a folder given by descriptor without ever following a symlink."""
    for name in os.listdir(dir_fd):
        st = os.lstat(name, dir_fd=dir_fd)
        if stat.S_ISDIR(st.st_mode):
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            try:
                _rmtree_fd(fd)
            finally:
                os.close(fd)
            os.rmdir(name, dir_fd=dir_fd)
        else:
            os.unlink(name, dir_fd=dir_fd)


def unpack_layer(
    blob: Path,
    dest: Path,
    *,
    mode: WhiteoutMode,
    limits: UnpackLimits | None = None,
    expected_diff_id: str | None = None,
) -> UnpackResult:
    """Extract one layer blob (gzip, zstd or plain tar) into ``dest`` (an existing folder).

    Blocking: call it in a thread. On error ``dest`` may hold a partial tree: the caller removes it.
    """
    limits = limits or UnpackLimits()
    name = blob.name[:12]
    ex = _Extractor(dest, mode, limits)
    try:
        with open(blob, "rb") as raw:
            compressed = os.fstat(raw.fileno()).st_size
            metered = _Metered(open_decompressed(raw), compressed, limits, name)
            reader = io.BufferedReader(metered, buffer_size=_CHUNK)
            try:
                with tarfile.open(fileobj=reader, mode="r|") as tf:
                    for member in tf:
                        ex.entry(tf, member)
                # Read to the end: the diff ID covers the tar padding too.
                while reader.read(_CHUNK):
                    pass
            except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
                raise CorruptLayer(f"layer {name}: corrupt or truncated: {exc}") from None
            except OSError as exc:
                if exc.errno in (errno.EIO, None):
                    raise CorruptLayer(f"layer {name}: corrupt or truncated: {exc}") from None
                raise
        ex.finish()
    finally:
        ex.close()
    diff_id = "sha256:" + metered.hash.hexdigest()
    if expected_diff_id is not None and diff_id != expected_diff_id:
        raise CorruptLayer(f"layer {name}: diff ID {diff_id} is not the announced {expected_diff_id}")
    return UnpackResult(diff_id=diff_id, size=metered.total, skipped=ex.skipped)


def remove_tree(path: Path) -> None:
    """rmtree that also clears immutable-free trees with odd modes; never follows symlinks."""
    if path.is_symlink() or not path.exists():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    shutil.rmtree(path)
