"""State written atomically: a temporary file, fsync, rename (DESIGN.md's rule for every service).

stdlib only: the shim uses it too.
"""

from __future__ import annotations

import os


def atomic_write(path: str | os.PathLike[str], data: bytes, *, sync_dir: bool = False) -> None:
    """Readers see the old file or the new one, never half of one; after a crash, one of the two.

    ``sync_dir`` also makes the rename itself durable (an fsync of the folder).
    """
    path = os.fspath(path)
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    if sync_dir:
        dir_fd = os.open(folder or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
