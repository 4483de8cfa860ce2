"""The container's log, written by the shim itself: Docker's json-file format here, the local driver's in
locallog; both rotate by size and count (rotation.py)."""

from __future__ import annotations

from services.common import jsonio
from services.common.shimproto import rfc3339_nano
from services.shim.rotation import MAX_LINE, RotatingFile

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class JsonFileLog:
    """One entry per line: ``{"log": "...\\n", "stream": "stdout", "time": "..."}``.

    Partial lines are held per stream until their newline (or 16 KiB, or the stream's end), like
    Docker's json-file driver, so ``docker logs`` sees the same entries. ``attrs`` (the labels, env
    and tag options' values) go in every entry as dockerd's json-file puts them.
    """

    __slots__ = ("file", "partial", "attrs")

    def __init__(self, path: str, max_size: int = 0, max_file: int = 1, compress: bool = False,
                 attrs: dict[str, str] | None = None) -> None:
        self.file = RotatingFile(path, max_size, max_file, compress)
        self.partial: dict[str, bytes] = {"stdout": b"", "stderr": b""}
        self.attrs = attrs or None

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
            self.file.append(entries, stamp)

    def flush(self, stream: str) -> None:
        """The stream ended: its unterminated last line becomes an entry of its own."""
        if self.partial[stream]:
            stamp = rfc3339_nano()
            self.file.append([self._entry(stream, self.partial[stream], stamp)], stamp)
            self.partial[stream] = b""

    def _entry(self, stream: str, line: bytes, stamp: str) -> bytes:
        text = line.decode("utf-8", "replace")
        entry: dict[str, Any] = {"log": text, "stream": stream}
        if self.attrs:
            entry["attrs"] = self.attrs
        entry["time"] = stamp
        return jsonio.dumps(entry).encode() + b"\n"

    def close(self) -> None:
        for stream in self.partial:
            self.flush(stream)
        self.file.close()


def open_log(boot: dict[str, Any]) -> Any:
    """The writer bootstrap.json asks for (``log_format`` json-file, local or cri), or None without a path."""
    path = boot.get("log_path")
    if not path:
        return None
    size, count = int(boot.get("log_max_size") or 0), int(boot.get("log_max_file") or 1)
    compress = bool(boot.get("log_compress"))
    if boot.get("log_format") == "cri":  # skiff-cri's containers: kubelet reads and rotates the file
        from services.shim.crilog import CriLog

        return CriLog(path)
    if boot.get("log_format") == "local":
        from services.shim.locallog import LocalLog

        return LocalLog(path, size, count, compress)
    return JsonFileLog(path, size, count, compress, boot.get("log_attrs") or None)
