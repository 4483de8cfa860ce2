"""The folders of removed snapshots, deleted after the removal has answered.

A removal unmounts the snapshot and drops it from the table on disk before it answers; deleting
its folder (the container's upper layer: each file an unlink) is no part of what the caller waits
for, and was 1.3 ms of every ``docker run --rm``'s way from the exit to the answer. One thread
deletes them in order; a highlevel that stops waits for it a few seconds, at its exit. One killed
first leaves numbered folders no snapshot names: the next start removes those
(``Snapshotter._drop_unnamed``), as it removes what a killed prepare left.
"""

from __future__ import annotations

import atexit
import shutil
import threading
from pathlib import Path

import structlog

log = structlog.get_logger(service="highlevel")
EXIT_WAIT = 5.0  # seconds a stopping highlevel gives the folders still to delete


class FolderDiscarder:
    def __init__(self) -> None:
        self._pending: list[Path] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def discard(self, folder: Path) -> None:
        """``folder`` goes, soon, on the discarder's thread."""
        with self._cond:
            self._pending.append(folder)
            self._cond.notify_all()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="snapshot-discard", daemon=True)
                self._thread.start()
                atexit.register(self.wait_idle, EXIT_WAIT)

    def wait_idle(self, timeout: float) -> bool:
        """Until every folder handed over is gone (True), or ``timeout`` seconds (False)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending, timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._pending))
                folder = self._pending[0]
            try:
                shutil.rmtree(folder)
            except FileNotFoundError:
                pass
            except OSError as exc:  # what is left is removed at the next start (_drop_unnamed)
                log.warning("snapshot folder not removed", folder=str(folder), error=str(exc))
            with self._cond:
                self._pending.pop(0)
                self._cond.notify_all()
