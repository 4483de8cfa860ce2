"""Layer unpacking: a layer blob decompressed, metered and hashed, its entries written by the one
safe extraction into a root (services.common.untar: an fd-relative walk that never follows a
symlink out, refuses ``..``, skips devices; a layer keeps its setuid/setgid bits).

What is a layer's own: the decompressed size and ratio are capped (decompression bombs), whiteouts
become overlayfs markers or are applied, and the uncompressed stream is hashed so the diff ID is
checked against the image config.
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
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.untar import CorruptArchive, ExtractOptions, RootExtractor, UnsafeArchive, WhiteoutMode

_CHUNK = 1 << 20


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
    # Images keep their set-uid/set-gid bits, as Docker's and containerd's unpack do (su, ping,
    # critest's NoNewPrivs=false spec): no_new_privs and the capability set decide what they gain.
    allow_setuid: bool = True
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
    ex = RootExtractor(dest, ExtractOptions(whiteouts=mode, allow_setuid=limits.allow_setuid,
                                            allow_devices=limits.allow_devices))
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
            except UnsafeArchive as exc:
                raise UnsafeLayer(f"layer {name}: {exc.message}") from None
            except CorruptArchive as exc:
                raise CorruptLayer(f"layer {name}: {exc.message}") from None
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
