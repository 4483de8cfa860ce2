"""State written atomically: a temporary file, fsync, rename (DESIGN.md's rule for every service).

The one way every service writes a file that others read: ``durable=True`` (the default) for state
under ``<lib>`` that must survive a crash; ``durable=False`` for state under ``<run>`` (a tmpfs,
gone at reboot anyway), where the fsync would only cost time on the launch path.

On ``posix`` alone, not ``os``: the shim and lowlevel use it too, and every import there costs
every launch (``os`` is 2.5 ms of a skiff-lowlevel run, which otherwise never loads it).

A writer SIGKILLed between its temporary file's creation and the rename leaves ``.<name>.<pid>.tmp``
behind: the first write of a process into a folder sweeps the temporaries of writers no longer alive
(``sweep``), so a restarted service clears what its killed predecessor left where it writes again.
"""

from __future__ import annotations

import posix as os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from os import PathLike

_SWEPT: set[str] = set()  # the folders this process has swept already
# A folder per container: at 4,096 the set held ~1 MiB of paths in the daemon and highlevel alike
# and took ~7 minutes of 10 launches/s to fill (skiff soak's RSS growth after the first minute);
# forgetting costs one more listdir of a small folder, cheaper than the write's fsync.
SWEPT_MAX = 256


def _writer_pid(name: str) -> int:
    """The pid in ``.<name>.<pid>.tmp``; 0 for any other name."""
    if not (name.startswith(".") and name.endswith(".tmp")):
        return 0
    pid = name[:-4].rpartition(".")[2]
    return int(pid) if pid.isdigit() else 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep(folder: str) -> None:
    """Removes the temporaries in ``folder`` left by writers that died before their rename."""
    own = os.getpid()
    try:
        names = os.listdir(folder or ".")
    except OSError:
        return
    for name in names:
        pid = _writer_pid(name)
        # Our own pid: another thread of ours may be writing it now.
        if pid and pid != own and not _alive(pid):
            try:
                os.unlink(f"{folder}{name}")
            except OSError:
                pass


def atomic_write(
    path: str | PathLike[str],
    data: bytes,
    *,
    durable: bool = True,
    sync_dir: bool = False,
    mode: int = 0o600,
) -> None:
    """Readers see the old file or the new one, never half of one; after a crash, one of the two.

    ``durable=False`` skips the fsync (atomic against readers, not against a power cut): for /run.
    ``sync_dir`` also makes the rename itself durable (an fsync of the folder).
    """
    path = os.fspath(path)
    head, _, name = path.rpartition("/")
    folder = head + "/" if head or path.startswith("/") else ""
    if folder not in _SWEPT:
        if len(_SWEPT) >= SWEPT_MAX:
            _SWEPT.clear()
        _SWEPT.add(folder)
        sweep(folder)
    # The pid keeps two processes writing the same file from sharing (and truncating) one temp file.
    tmp = f"{folder}.{name}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if sync_dir:
        dir_fd = os.open(folder or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
