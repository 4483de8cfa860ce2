"""The container's log in the CRI format kubelet reads (``log_format`` "cri", skiff-cri's containers).

One line per entry: ``<RFC3339Nano> <stdout|stderr> <F|P> <text>``; ``P`` marks a piece of a line
longer than 16 KiB (or the last, unterminated piece when the stream ends is still ``F``, as
containerd writes it). kubelet rotates the file itself, by renaming it and then calling
ReopenContainerLog: the next write here sees that the path no longer names the open file and opens it
anew, so no shim operation is needed for a reopen.
"""

from __future__ import annotations

import os

from services.common.shimproto import rfc3339_nano
from services.shim.rotation import MAX_LINE


class CriLog:
    __slots__ = ("path", "fd", "partial")

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = -1
        self.partial: dict[str, bytes] = {"stdout": b"", "stderr": b""}
        self._file()  # the file exists from the start, as kubelet (and critest) read it before any output

    def _file(self) -> int:
        """The open log, reopened when kubelet renamed (or removed) the path since."""
        if self.fd >= 0:
            try:
                same = os.stat(self.path).st_ino == os.fstat(self.fd).st_ino
            except OSError:
                same = False
            if same:
                return self.fd
            os.close(self.fd)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        return self.fd

    def write(self, stream: str, data: bytes) -> None:
        pending = self.partial[stream] + data
        out: list[bytes] = []
        stamp = rfc3339_nano().encode()
        tag = stream.encode()
        while True:
            cut = pending.find(b"\n")
            if 0 <= cut < MAX_LINE:
                out.append(b"%s %s F %s\n" % (stamp, tag, pending[:cut]))
                pending = pending[cut + 1:]
            elif len(pending) >= MAX_LINE:
                out.append(b"%s %s P %s\n" % (stamp, tag, pending[:MAX_LINE]))
                pending = pending[MAX_LINE:]
            else:
                break
        self.partial[stream] = pending
        if out:
            os.write(self._file(), b"".join(out))

    def flush(self, stream: str) -> None:
        if self.partial[stream]:
            line = b"%s %s F %s\n" % (rfc3339_nano().encode(), stream.encode(), self.partial[stream])
            self.partial[stream] = b""
            os.write(self._file(), line)

    def close(self) -> None:
        for stream in self.partial:
            self.flush(stream)
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
