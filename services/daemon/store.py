"""Container records on disk: one folder per container under <lib>/daemon/containers/, written atomically."""

from __future__ import annotations

import shutil
from pathlib import Path

from services.common.atomic import atomic_write
from services.gen.skiff.daemon.v1 import Container

RECORD = "record.pb"


class RecordStore:
    """Blocking file operations: the manager calls them through ``asyncio.to_thread``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def folder(self, container_id: str) -> Path:
        return self.root / container_id

    def save(self, record: Container) -> None:
        """tmp, fsync, rename: a crash leaves the old record or the new one, never half of one."""
        self.write(record.id, bytes(record))

    def write(self, container_id: str, data: bytes) -> None:
        """An encoded record (encode it where nothing else changes it: the event loop)."""
        folder = self.folder(container_id)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / RECORD, data)

    def load_all(self) -> list[Container]:
        """The records, at the daemon's start. A folder without one is what a daemon killed inside
        a create (before its first record's rename) or a removal left: nothing owns it, it goes
        (the soak saw ``.record.pb.<pid>.tmp`` stay for ever after kill-daemon)."""
        records: list[Container] = []
        if not self.root.is_dir():
            return records
        for folder in self.root.iterdir():
            try:
                records.append(Container().parse((folder / RECORD).read_bytes()))
            except FileNotFoundError:
                shutil.rmtree(folder, ignore_errors=True)
        return records

    def delete(self, container_id: str) -> None:
        shutil.rmtree(self.folder(container_id), ignore_errors=True)
