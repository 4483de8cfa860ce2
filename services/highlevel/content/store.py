"""The content store: blobs by digest, verified while written, written atomically, shared.

Layout (as containerd's): ``<root>/blobs/sha256/<hex>`` for committed blobs and ``<root>/ingest/``
for blobs being written. A blob only appears under ``blobs/`` once its digest has been checked and
its bytes are on disk (fsync then rename), so a reader never sees a partial blob.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from services.common.errors import InvalidArgument, NotFound

DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$")


def check_digest(digest: str) -> str:
    """Only sha256 is accepted: every digest becomes a file name, so it must be exactly this shape."""
    if not DIGEST_RE.match(digest):
        raise InvalidArgument(f"invalid digest `{digest}`: want sha256:<64 hex>")
    return digest


def digest_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class DigestMismatch(InvalidArgument):
    """The bytes received do not hash to the digest (or size) that was announced."""


@dataclass(slots=True)
class Lease:
    """Digests a pull or load in flight is writing: garbage collection never takes them."""

    id: int
    digests: set[str] = field(default_factory=set)


class BlobWriter:
    """Streams one blob into ``ingest/``; ``commit`` verifies size and digest then renames.

    Synchronous on purpose: callers run it in a thread (asyncio.to_thread), hashing never runs on
    the event loop.
    """

    def __init__(self, store: ContentStore, expected: str | None, expected_size: int | None) -> None:
        self._store = store
        self.expected = expected
        self.expected_size = expected_size
        self._hash = hashlib.sha256()
        self.offset = 0
        self.path = store.ingest_dir / f"{os.getpid()}-{next(store._counter)}-{(expected or 'new')[7:19]}"
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        self._file = os.fdopen(fd, "wb")
        self._closed = False

    def write(self, data: bytes) -> None:
        if self.expected_size is not None and self.offset + len(data) > self.expected_size:
            raise DigestMismatch(
                f"blob {self.expected}: more than the announced {self.expected_size} bytes received"
            )
        self._file.write(data)
        self._hash.update(data)
        self.offset += len(data)

    def reset(self) -> None:
        """Start again from byte 0 (a server that cannot resume a broken download)."""
        self._file.seek(0)
        self._file.truncate()
        self._hash = hashlib.sha256()
        self.offset = 0

    def commit(self) -> str:
        digest = "sha256:" + self._hash.hexdigest()
        try:
            if self.expected_size is not None and self.offset != self.expected_size:
                raise DigestMismatch(
                    f"blob {self.expected}: size {self.offset} received, {self.expected_size} announced"
                )
            if self.expected is not None and digest != self.expected:
                raise DigestMismatch(f"blob digest mismatch: expected {self.expected}, got {digest}")
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._closed = True
            target = self._store.blob_path(digest)
            os.rename(self.path, target)
            self._store._fsync_dir(target.parent)
            return digest
        finally:
            self.abort()

    def abort(self) -> None:
        """Drop the partial blob: nothing half-written survives a failure."""
        if not self._closed:
            self._file.close()
            self._closed = True
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class ContentStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs_dir = root / "blobs" / "sha256"
        self.ingest_dir = root / "ingest"
        self.blobs_dir.mkdir(parents=True, exist_ok=True)
        self.ingest_dir.mkdir(parents=True, exist_ok=True)
        self._counter = itertools.count()
        self._leases: dict[int, Lease] = {}
        self._lease_ids = itertools.count(1)
        # Leases are taken from the event loop and from worker threads alike.
        self._lock = threading.Lock()
        # Files left in ingest/ by a process that died mid-write are garbage from the start.
        for stale in self.ingest_dir.iterdir():
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()

    def blob_path(self, digest: str) -> Path:
        return self.blobs_dir / check_digest(digest)[7:]

    def has(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def size(self, digest: str) -> int:
        try:
            return self.blob_path(digest).stat().st_size
        except FileNotFoundError:
            raise NotFound(f"blob {digest} not found in the content store") from None

    def read_bytes(self, digest: str) -> bytes:
        try:
            return self.blob_path(digest).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"blob {digest} not found in the content store") from None

    def writer(self, expected: str | None = None, expected_size: int | None = None) -> BlobWriter:
        if expected is not None:
            check_digest(expected)
        return BlobWriter(self, expected, expected_size)

    def write_bytes(self, data: bytes, expected: str | None = None) -> str:
        if expected is not None and self.has(expected):
            return expected
        w = self.writer(expected, None)
        try:
            w.write(data)
        except BaseException:
            w.abort()
            raise
        return w.commit()

    def write_file(self, src: Path, expected: str | None = None, chunk: int = 1 << 20) -> str:
        w = self.writer(expected, None)
        try:
            with open(src, "rb") as f:
                while block := f.read(chunk):
                    w.write(block)
        except BaseException:
            w.abort()
            raise
        return w.commit()

    def delete(self, digest: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.blob_path(digest).unlink()

    def list(self) -> list[str]:
        return sorted("sha256:" + p.name for p in self.blobs_dir.iterdir() if len(p.name) == 64)

    @contextlib.contextmanager
    def lease(self) -> Iterator[Lease]:
        with self._lock:
            lease = Lease(next(self._lease_ids))
            self._leases[lease.id] = lease
        try:
            yield lease
        finally:
            with self._lock:
                self._leases.pop(lease.id, None)

    def leased(self) -> set[str]:
        with self._lock:
            return set().union(*(lease.digests for lease in self._leases.values()))

    def gc(self, referenced: set[str]) -> list[str]:
        """Delete every blob neither referenced nor leased; returns what was removed."""
        keep = referenced | self.leased()
        removed = [d for d in self.list() if d not in keep]
        for d in removed:
            self.delete(d)
        return removed

    @staticmethod
    def _fsync_dir(path: Path) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
