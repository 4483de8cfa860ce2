"""Image names → manifest descriptors, persisted atomically under ``<lib>/highlevel/images/``; an image
no name points to (dangling) is kept under its manifest digest."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.common.atomic import atomic_write
from services.common.errors import NotFound
from services.highlevel.images.manifest import Descriptor


@dataclass(slots=True)
class ImageRecord:
    name: str
    target: Descriptor
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    # The manifest list/index it was picked from, kept so push and save can refer to it.
    index_digest: str | None = None
    # Repositories the blobs came from, for cross-repository mounts on push.
    sources: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "target": self.target.to_json(), "created": self.created,
                "updated": self.updated, "index_digest": self.index_digest, "sources": self.sources}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ImageRecord:
        return cls(d["name"], Descriptor.from_json(d["target"]), float(d["created"]), float(d["updated"]),
                   d.get("index_digest"), list(d.get("sources") or []))


class ImageStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._path = root / "images.json"
        self._lock = threading.Lock()
        self._records: dict[str, ImageRecord] = {}
        try:
            data = json.loads(self._path.read_text())
            self._records = {k: ImageRecord.from_json(v) for k, v in data.items()}
        except FileNotFoundError:
            pass

    def _save(self) -> None:
        atomic_write(self._path, json.dumps({k: v.to_json() for k, v in self._records.items()}).encode())

    def get(self, name: str) -> ImageRecord:
        with self._lock:
            rec = self._records.get(name)
        if rec is None:
            raise NotFound(f"No such image: {name}")
        return rec

    def find(self, name: str) -> ImageRecord | None:
        with self._lock:
            return self._records.get(name)

    def put(self, rec: ImageRecord) -> None:
        """Name an image. As dockerd's reference store: a name moved off an image leaves that image,
        if nothing else names it, dangling (named by its manifest digest, ``<none>`` to Docker) rather
        than gone; and a dangling image that gets a name is dangling no more."""
        with self._lock:
            if _dangling(rec.name) and any(r.target.digest == rec.target.digest for r in self._records.values()):
                return  # named already (a load of an archive saved by id): it is no dangling image
            old = self._records.get(rec.name)
            if old is not None:
                rec.created = old.created if old.target.digest == rec.target.digest else rec.created
            self._records[rec.name] = rec
            if not _dangling(rec.name):
                self._records.pop(rec.target.digest, None)
            if old is not None and old.target.digest != rec.target.digest and not any(
                    r.target.digest == old.target.digest for r in self._records.values()):
                self._records[old.target.digest] = ImageRecord(old.target.digest, old.target, old.created,
                                                               index_digest=old.index_digest)
            self._save()

    def delete(self, name: str) -> None:
        with self._lock:
            if self._records.pop(name, None) is None:
                raise NotFound(f"No such image: {name}")
            self._save()

    def list(self) -> list[ImageRecord]:
        with self._lock:
            return list(self._records.values())


def _dangling(name: str) -> bool:
    """Records named by their manifest digest hold an image no name points to."""
    return name.startswith("sha256:")
