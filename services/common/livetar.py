"""Adding files to a tar while the container may still be changing them (commit --pause=false,
export and cp of a running container).

tarfile's own ``add`` takes the size from ``stat`` and then fails on a file that shrank meanwhile
("unexpected end of data") or vanished. GNU tar's rules instead: a file gone is skipped, one that
shrank is padded with zeros up to the size its header announced, one that grew is cut there.
"""

from __future__ import annotations

import io
import os
import tarfile


class _Padded:
    """The file's bytes, then zeros: tarfile reads exactly the header's size from it."""

    def __init__(self, raw: io.BufferedReader) -> None:
        self.raw = raw

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        return data if size < 0 or len(data) == size else data + bytes(size - len(data))


def add_live(tf: tarfile.TarFile, path: str | os.PathLike[str], arcname: str) -> bool:
    """One entry (not recursive); False when the path vanished before it could be read."""
    try:
        info = tf.gettarinfo(path, arcname)
    except FileNotFoundError:
        return False
    if info is None:  # a socket: tar has no entry for it
        return False
    if not info.isreg():
        tf.addfile(info)
        return True
    try:
        raw = open(path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return False
    with raw:
        tf.addfile(info, _Padded(raw))
    return True


def add_tree_live(tf: tarfile.TarFile, path: str | os.PathLike[str], arcname: str) -> None:
    """``path`` and, for a folder, everything below it, in a stable (sorted) order."""
    if not add_live(tf, path, arcname) or not os.path.isdir(path) or os.path.islink(path):
        return
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, path)
        for name in sorted(dirnames) + sorted(filenames):
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            add_live(tf, os.path.join(dirpath, name), f"{arcname}/{rel}" if arcname else rel)
