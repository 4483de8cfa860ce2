"""The log file's rotation, as dockerd's loggerutils.LogFile rotates, for every log format the shim writes.

The live file becomes path.1 (every older one moves up, the one past max-file goes); with compress,
path.1 is then gzipped to path.1.gz in a thread (dockerd does it in a goroutine) whose gzip header
carries ``{"lastTime": …}`` as dockerd's does; the next rotation waits for it.
"""

from __future__ import annotations

import os

from services.common import jsonio

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# Docker splits a line longer than this into several entries (its logger's buffer size).
MAX_LINE = 16 * 1024


class RotatingFile:
    """Appends whole records to path, rotated by size (max_size 0: never) and count."""

    __slots__ = ("path", "max_size", "max_file", "compress", "fd", "size", "last_time", "compressor")

    def __init__(self, path: str, max_size: int = 0, max_file: int = 1, compress: bool = False) -> None:
        self.path = path
        self.max_size = max_size
        self.max_file = max(max_file, 1)
        self.compress = compress and self.max_file > 1
        self.last_time = ""
        self.compressor: Any = None  # the thread gzipping path.1, if one runs
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self.fd = -1
        self.size = 0
        self._open()

    def _open(self) -> None:
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        self.size = os.fstat(self.fd).st_size

    def append(self, records: list[bytes], last_time: str) -> None:
        """Rotates before a record that would take the file past max_size (a file never holds more, unless
        one record alone does), record by record as dockerd; one write per run of records."""
        # Taken first: a file rotated within this batch ends with one of its records (or an older one: a
        # lastTime a little late only makes a reader open the file).
        self.last_time = last_time
        if self.max_size <= 0:
            self._write(b"".join(records))
        else:
            run: list[bytes] = []
            size = self.size
            for record in records:
                if size > 0 and size + len(record) > self.max_size:
                    self._write(b"".join(run))
                    run.clear()
                    self._rotate()
                    size = 0
                run.append(record)
                size += len(record)
            self._write(b"".join(run))

    def _write(self, blob: bytes) -> None:
        if blob:
            os.write(self.fd, blob)
            self.size += len(blob)

    def _rotate(self) -> None:
        self._wait_compressor()
        os.close(self.fd)
        suffix = ".gz" if self.compress else ""
        # path.N-1 is dropped, every other file moves one up, path becomes path.1 (Docker's scheme).
        for index in range(self.max_file - 1, 1, -1):
            source = f"{self.path}.{index - 1}{suffix}"
            if os.path.exists(source):
                os.replace(source, f"{self.path}.{index}{suffix}")
        if self.max_file == 1:
            os.truncate(self.path, 0)
        else:
            os.replace(self.path, f"{self.path}.1")
        self._open()
        if self.compress:
            import threading  # only a compressing log pays for it

            self.compressor = threading.Thread(target=gzip_file, args=(f"{self.path}.1", self.last_time),
                                               daemon=True)
            self.compressor.start()

    def _wait_compressor(self) -> None:
        if self.compressor is not None:
            self.compressor.join()
            self.compressor = None

    def close(self) -> None:
        self._wait_compressor()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def gzip_file(source: str, last_time: str) -> None:
    """source -> source.gz (whole before it appears), then source goes; dockerd's compressFile.

    Written with zlib: the gzip module cannot put dockerd's metadata in the header's extra field.
    """
    import zlib

    extra = jsonio.dumps({"lastTime": last_time or "0001-01-01T00:00:00Z"}).encode()
    # magic, deflate, FEXTRA, mtime 0, no extra flags, OS unknown (as Go's gzip.Writer), then the extra.
    header = b"\x1f\x8b\x08\x04\x00\x00\x00\x00\x00\xff" + len(extra).to_bytes(2, "little") + extra
    temporary = f"{source}.gz.tmp"
    try:
        with open(source, "rb") as src, open(temporary, "wb") as dst:
            dst.write(header)
            deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
            crc = size = 0
            while chunk := src.read(1 << 20):
                crc = zlib.crc32(chunk, crc)
                size += len(chunk)
                dst.write(deflate.compress(chunk))
            dst.write(deflate.flush())
            dst.write(crc.to_bytes(4, "little") + (size & 0xFFFFFFFF).to_bytes(4, "little"))
        os.chmod(temporary, 0o640)
        os.replace(temporary, f"{source}.gz")
        os.unlink(source)
    except OSError:
        # Left uncompressed (readers take path.N as well as path.N.gz); never a half .gz.
        try:
            os.unlink(temporary)
        except OSError:
            pass
