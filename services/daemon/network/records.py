"""Network records as JSON files under ``<lib>/daemon/network/records``, one per network."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from services.common.atomic import atomic_write
from services.gen.skiff.daemon.v1 import Network


@dataclass(slots=True)
class NetworkRecords:
    """Network records as JSON files under ``<lib>/daemon/network/records`` (blocking: call in a thread)."""

    folder: Path

    def save(self, net: Network) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write(self.folder / f"{net.id}.json", net.to_json().encode())

    def load_all(self) -> list[Network]:
        if not self.folder.is_dir():
            return []
        return [Network().from_json(p.read_text()) for p in sorted(self.folder.glob("*.json"))]

    def delete(self, network_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.folder / f"{network_id}.json").unlink()
