"""Docker's json-file log, written by the shim itself and rotated by size and count."""

from __future__ import annotations

import os

from services.common import jsonio
from services.common.shimproto import rfc3339_nano

# Docker splits a line longer than this into several entries (its logger's buffer size).
MAX_LINE = 16 * 1024


class JsonFileLog:
    """One entry per line: ``{"log": "...\\n", "stream": "stdout", "time": "..."}``.

    Partial lines are held per stream until their newline (or 16 KiB, or the stream's end), like
    Docker's json-file driver, so ``docker logs`` sees the same entries.
    """

    __slots__ = ("path", "max_size", "max_file", "fd", "size", "partial")

    def __init__(self, path: str, max_size: int = 0, max_file: int = 1) -> None:
        self.path = path
        self.max_size = max_size
        self.max_file = max(max_file, 1)
        self.partial: dict[str, bytes] = {"stdout": b"", "stderr": b""}
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self.fd = -1
        self.size = 0
        self._open()

    def _open(self) -> None:
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        self.size = os.fstat(self.fd).st_size

    def write(self, stream: str, data: bytes) -> None:
        pending = self.partial[stream] + data
        entries: list[bytes] = []
        stamp = rfc3339_nano()
        while True:
            cut = pending.find(b"\n")
            if cut < 0 and len(pending) < MAX_LINE:
                break
            end = cut + 1 if 0 <= cut < MAX_LINE else MAX_LINE
            entries.append(self._entry(stream, pending[:end], stamp))
            pending = pending[end:]
        self.partial[stream] = pending
        if entries:
            self._append(b"".join(entries))

    def flush(self, stream: str) -> None:
        """The stream ended: its unterminated last line becomes an entry of its own."""
        if self.partial[stream]:
            self._append(self._entry(stream, self.partial[stream], rfc3339_nano()))
            self.partial[stream] = b""

    @staticmethod
    def _entry(stream: str, line: bytes, stamp: str) -> bytes:
        text = line.decode("utf-8", "replace")
        return jsonio.dumps({"log": text, "stream": stream, "time": stamp}).encode() + b"\n"

    def _append(self, blob: bytes) -> None:
        if self.max_size > 0 and self.size > 0 and self.size + len(blob) > self.max_size:
            self._rotate()
        os.write(self.fd, blob)
        self.size += len(blob)

    def _rotate(self) -> None:
        os.close(self.fd)
        # path.N-1 is dropped, every other file moves one up, path becomes path.1 (Docker's scheme).
        for index in range(self.max_file - 1, 0, -1):
            source = self.path if index == 1 else f"{self.path}.{index - 1}"
            if os.path.exists(source):
                os.replace(source, f"{self.path}.{index}")
        if self.max_file == 1:
            os.truncate(self.path, 0)
        self._open()

    def close(self) -> None:
        for stream in self.partial:
            self.flush(stream)
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
