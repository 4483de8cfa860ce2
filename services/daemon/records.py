"""The containers the daemon knows: their records in memory (one Entry each) and on disk, their names,
and Docker's ways of naming one (full id, name, unique id prefix).

The lifecycle (containers.py), networking, execs and the other services share this one table; none of
them owns another to reach it.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from services.common.errors import Conflict, InvalidArgument, NotFound
from services.daemon.store import RecordStore
from services.dockermodel.health import health_name
from services.gen.skiff.daemon.v1 import Container, ListFilters, State

NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
ADJECTIVES = ("brave", "calm", "eager", "fond", "keen", "lucid", "merry", "quirky", "sharp", "witty")
NOUNS = ("babbage", "curie", "darwin", "euler", "hopper", "lovelace", "noether", "pascal", "turing", "wright")
STATUS_NAMES = {
    State.CREATED: "created", State.RUNNING: "running", State.PAUSED: "paused", State.RESTARTING: "restarting",
    State.REMOVING: "removing", State.EXITED: "exited", State.DEAD: "dead",
}


def now_rfc3339() -> str:
    ns = time.time_ns()
    seconds, nanos = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos:09d}Z"


def status_name(state: State) -> str:
    return STATUS_NAMES.get(state, "created")


@dataclass(slots=True)
class Entry:
    """A container in memory: its record, its lock, and what waiters watch."""

    record: Container
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    exits: int = 0
    removed: bool = False
    watcher: asyncio.Task[None] | None = None
    on_change: Callable[[], None] = field(default=lambda: None)  # the records' changed, set by add

    def notify(self) -> None:
        self.on_change()  # before any waiter hears of it (see ContainerRecords.changed)
        self.changed.set()
        self.changed = asyncio.Event()

    @property
    def running(self) -> bool:
        return self.record.state.status in (State.RUNNING, State.PAUSED, State.RESTARTING)


class ContainerRecords:
    """Every container by id and by name; records saved through the store (``<lib>/daemon/containers``)."""

    def __init__(self, store: RecordStore) -> None:
        self.store = store
        self.entries: dict[str, Entry] = {}
        self.names: dict[str, str] = {}
        # By id, how many times the record was saved: the list's kept entries (summaries.py) are
        # made again when this moves, as dockerd's list reads what a container's checkpoint left.
        self.versions: dict[str, int] = {}
        # Told of every change a list could show, on the event loop, before anyone can hear of it
        # elsewhere: the apiserver's kept list goes stale with it (common/list_generation.py).
        self.on_change: Callable[[], None] = lambda: None

    def changed(self) -> None:
        """A record changed in memory: a save, an addition, a removal, a waiter woken, an event."""
        self.on_change()

    async def load(self) -> None:
        for record in await asyncio.to_thread(self.store.load_all):
            self.add(record)

    def add(self, record: Container) -> Entry:
        entry = self.entries[record.id] = Entry(record, on_change=self.changed)
        self.names[record.name] = record.id
        self.versions[record.id] = self.versions.get(record.id, 0) + 1
        self.changed()
        return entry

    def drop(self, record: Container) -> None:
        """Out of the table (its files go with RecordStore.delete)."""
        self.entries.pop(record.id, None)
        self.versions.pop(record.id, None)
        if self.names.get(record.name) == record.id:
            del self.names[record.name]
        self.changed()

    def folder(self, container_id: str) -> Path:
        """The container's own folder: its record, its json-file log, its network files."""
        return self.store.folder(container_id)

    def get(self, ref: str) -> Entry:
        """Full id, name (with or without "/"), or a unique id prefix; Docker's order."""
        if not ref:
            raise NotFound("No such container: ")
        if ref in self.entries:
            return self.entries[ref]
        by_name = self.names.get(ref.lstrip("/"))
        if by_name:
            return self.entries[by_name]
        matches = [e for cid, e in self.entries.items() if cid.startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise InvalidArgument(f"multiple IDs found with provided prefix: {ref}")
        raise NotFound(f"No such container: {ref}")

    def reserve_name(self, name: str, container_id: str) -> str:
        """The name (a generated one when empty), taken now for ``container_id``."""
        if not name:
            for _ in range(100):
                candidate = f"{secrets.choice(ADJECTIVES)}_{secrets.choice(NOUNS)}{secrets.randbelow(1000)}"
                if candidate not in self.names:
                    name = candidate
                    break
        name = name.lstrip("/")
        check_name(name)
        self._check_free(name)
        # No await between the check and this line: the reservation is atomic on the event loop.
        self.names[name] = container_id
        return name

    def _check_free(self, name: str) -> None:
        if name in self.names:
            owner = self.names[name]
            raise Conflict(f'Conflict. The container name "/{name}" is already in use by container "{owner}". '
                           "You have to remove (or rename) that container to be able to reuse that name.")

    async def save(self, record: Container) -> None:
        """The record, encoded here on the event loop (nothing can change it half-way through) and
        written in a thread. Encoding in the thread raced coroutines that kept changing the record."""
        data = bytes(record)
        self.changed_in_memory(record)
        await asyncio.to_thread(self.store.write, record.id, data)

    def changed_in_memory(self, record: Container) -> None:
        """A change the disk need not keep: the list's row is made again all the same."""
        self.versions[record.id] = self.versions.get(record.id, 0) + 1
        self.changed()

    def list(self, all_: bool, filters: ListFilters, limit: int = 0) -> list[Container]:
        chosen: list[Container] = []
        for entry in self.entries.values():
            record = entry.record
            # dockerd: a limit (ps -n, ps -l) counts stopped containers too.
            if not all_ and limit <= 0 and not entry.running and not filters.status:
                continue
            if filters.id and not any(record.id.startswith(i) for i in filters.id):
                continue
            if filters.name and not any(_name_matches(n, record.name) for n in filters.name):
                continue
            if filters.status and status_name(record.state.status) not in filters.status:
                continue
            if filters.health and health_name(record) not in filters.health:
                continue
            if not all(_label_matches(record.config.labels, f) for f in filters.label):
                continue
            chosen.append(record)
        chosen.sort(key=lambda r: r.created, reverse=True)
        return chosen[:limit] if limit > 0 else chosen


def check_name(name: str) -> None:
    if not NAME_RE.match(name):
        raise InvalidArgument(f"Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")


def _name_matches(pattern: str, name: str) -> bool:
    """dockerd's filters.Match on the name with its slash and without: "a1", "^a1" and "^/a1$" find /a1."""
    try:
        return pattern in (name, f"/{name}") or any(re.search(pattern, n) for n in (f"/{name}", name))
    except re.error:
        return False


def _label_matches(labels: dict[str, str], wanted: str) -> bool:
    key, eq, value = wanted.partition("=")
    if key not in labels:
        return False
    return not eq or labels[key] == value
