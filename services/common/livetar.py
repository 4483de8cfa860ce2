"""Adding files to a tar while the container may still be changing them (commit --pause=false,
export and cp of a running container).

tarfile's own ``add`` takes the size from ``stat`` and then fails on a file that shrank meanwhile
("unexpected end of data") or vanished. GNU tar's rules instead: a file gone is skipped, one that
shrank is padded with zeros up to the size its header announced, one that grew is cut there.

A running container may also swap an entry for a symlink while it is read, and a symlink is
resolved by *our* kernel view, the host's: so nothing here follows one. A regular file is opened
with O_NOFOLLOW and its header made from that open file (fstat), a tree is walked with
``os.fwalk`` (directory descriptors, never descending a link), and with ``dir_fd`` (a folder
opened inside the container's root, e.g. by services.common.untar.open_in_root) no path above the
entry is looked up again at all.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import tarfile


class _Padded:
    """The file's bytes, then zeros: tarfile reads exactly the header's size from it."""

    def __init__(self, raw: io.BufferedReader) -> None:
        self.raw = raw

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        return data if size < 0 or len(data) == size else data + bytes(size - len(data))


def _at(path: str | os.PathLike[str], dir_fd: int | None) -> str:
    """A name tarfile can lstat (it takes no dir_fd): the folder through its descriptor."""
    return os.fspath(path) if dir_fd is None else f"/proc/self/fd/{dir_fd}/{os.fspath(path)}"


def add_live(tf: tarfile.TarFile, path: str | os.PathLike[str], arcname: str, *, dir_fd: int | None = None) -> bool:
    """One entry (not recursive), never through a symlink; False when it vanished (or turned into a
    link) before it could be read."""
    try:
        st = os.lstat(path, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    if stat.S_ISREG(st.st_mode):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
        except FileNotFoundError:
            return False
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # swapped for a symlink since the lstat: not read through
                return False
            raise
        with open(fd, "rb") as raw:
            info = tf.gettarinfo(arcname=arcname, fileobj=raw)
            if info is None:
                return False
            tf.addfile(info, _Padded(raw) if info.isreg() else None)
        return True
    try:
        info = tf.gettarinfo(_at(path, dir_fd), arcname)
    except FileNotFoundError:
        return False
    if info is None or info.isreg():  # a socket (tar has no entry for it), or swapped meanwhile
        return False
    tf.addfile(info)
    return True


def add_tree_live(tf: tarfile.TarFile, path: str | os.PathLike[str], arcname: str, *,
                  dir_fd: int | None = None) -> None:
    """``path`` and, for a folder, everything below it, in a stable (sorted) order."""
    if not add_live(tf, path, arcname, dir_fd=dir_fd):
        return
    try:
        if not stat.S_ISDIR(os.lstat(path, dir_fd=dir_fd).st_mode):
            return
        # fwalk does not descend a symlink (nor a folder swapped for one: it compares what it opened).
        for dirpath, dirnames, filenames, folder_fd in os.fwalk(path, dir_fd=dir_fd):
            dirnames.sort()
            rel_dir = os.path.relpath(dirpath, path)
            for name in sorted(dirnames) + sorted(filenames):
                rel = name if rel_dir == "." else f"{rel_dir}/{name}"
                add_live(tf, name, f"{arcname}/{rel}" if arcname else rel, dir_fd=folder_fd)
    except FileNotFoundError:
        return  # the folder went (or became a dangling link) after its header
