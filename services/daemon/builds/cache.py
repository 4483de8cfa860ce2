"""The build cache, keyed as dockerd's classic builder keys it: a step is reused when its parent
image and its instruction (the history line, which holds the build args of a RUN and the checksum
of a COPY's or ADD's files) match a step built before. The index lives in a JSON file beside the
daemon's records; the images themselves are ordinary (nameless) images in highlevel."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from services.common.atomic import atomic_write


@dataclass(slots=True)
class CacheEntry:
    image: str           # the step's image id
    parent: str          # the image it was built over ("" from scratch)
    description: str     # the step's history line
    created: float
    last_used: float
    uses: int = 0
    config: dict[str, Any] | None = None  # the image's Config: a hit needs no question to highlevel


def step_key(parent: str, created_by: str, extra: str = "") -> str:
    return hashlib.sha256(f"{parent}\n{created_by}\n{extra}".encode()).hexdigest()


class BuildCache:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, CacheEntry] = {}
        self.dirty = False  # steps added or forgotten since the last save (uses alone are not kept)
        if path.exists():
            try:
                raw = json.loads(path.read_text())
                self.entries = {k: CacheEntry(**v) for k, v in raw.items()}
            except (ValueError, TypeError):
                self.entries = {}  # a damaged index costs a cold build, never a failed one

    def lookup(self, key: str) -> CacheEntry | None:
        entry = self.entries.get(key)
        if entry is not None:
            entry.last_used = time.time()
            entry.uses += 1
        return entry

    def forget(self, key: str) -> None:
        if self.entries.pop(key, None) is not None:
            self.dirty = True

    def put(self, key: str, image: str, parent: str, description: str, config: dict[str, Any]) -> None:
        now = time.time()
        self.entries[key] = CacheEntry(image, parent, description, now, now, config=config)
        self.dirty = True

    def save(self) -> None:
        if not self.dirty:
            return
        self.dirty = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, json.dumps({k: asdict(v) for k, v in self.entries.items()}).encode(), durable=False)
