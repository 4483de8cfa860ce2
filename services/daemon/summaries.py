"""The entries of Docker's ``GET /containers/json``, rendered in the daemon: one JSON blob over gRPC.

Sending the records themselves cost more than the rest of the call together: betterproto encodes
and decodes a container record field by field in Python (about 1 ms a record each way), so a list of
50 took 60+ ms. The shapes come from services.dockermodel, pure functions over the daemon's
messages (stdlib and generated code only, no HTTP), so the apiserver and the daemon render them alike.

Each entry's JSON is kept between calls and made again only when its record was saved since
(``ContainerRecords.versions``), as dockerd's list reads the snapshot a container's last checkpoint
left in its view store: rendering read ~100 betterproto attributes a record, 6 ms of the daemon's
CPU per list of 50. Only State and Status are made at every call (Status says "Up 3 seconds").
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from services.dockermodel.render import STATUS_NAMES, container_summary, status_text, summary_fixed
from services.gen.skiff.daemon.v1 import Container

# Stands for State's value in a kept entry; the call puts State and Status in its place.
_HOLE = "\0skiff-list-state\0"
_MARK = f'"State":{json.dumps(_HOLE)}'


class Summaries:
    """Renders the list, keeping per record object its entry's JSON around State and Status, with the
    record's save count and the name it was rendered with. One per daemon (server.build_daemon)."""

    def __init__(self) -> None:
        self._kept: dict[int, tuple[Container, Any, str, str]] = {}

    def render(self, records: Iterable[Container], more_names: dict[str, list[str]] | None = None,
               versions: Mapping[str, int] | None = None) -> bytes:
        """``more_names``: by container id, names beside its own (legacy links' ``/<parent>/<alias>``);
        ``versions``: by container id, how many times its record was saved (None: render every entry)."""
        parts = []
        seen = set()
        for record in records:
            key = id(record)
            seen.add(key)
            extra = more_names.get(record.id) if more_names else None
            stamp = (versions.get(record.id, 0) if versions is not None else None, record.name, extra)
            kept = self._kept.get(key)
            if kept is None or kept[0] is not record or kept[1] != stamp or stamp[0] is None:
                try:
                    head, tail = _entry_around_state(record, extra)
                except _Unkeepable:
                    self._kept.pop(key, None)
                    parts.append(_entry(record, extra))
                    continue
                kept = (record, stamp, head, tail)
                self._kept[key] = kept
            state = record.state.status
            parts.append(f'{kept[2]}{json.dumps(STATUS_NAMES.get(state, "created"))},"Status":'
                         f'{json.dumps(status_text(record))}{kept[3]}')
        if len(self._kept) > 2 * len(seen) + 64:
            # Removed containers' entries go (the records kept alive here would otherwise grow forever).
            for key in [k for k in self._kept if k not in seen]:
                del self._kept[key]
        return f"[{','.join(parts)}]".encode()


def _summary(record: Container, extra: list[str] | None) -> dict[str, Any]:
    entry = container_summary(record, summary_fixed(record))
    if extra:
        entry["Names"] = [*entry["Names"], *extra]
    return entry


def _entry(record: Container, extra: list[str] | None) -> str:
    return json.dumps(_summary(record, extra), separators=(",", ":"))


def _entry_around_state(record: Container, extra: list[str] | None) -> tuple[str, str]:
    """The entry's JSON before State's value and after Status's, with the same keys and order as
    :func:`_entry` gives."""
    entry = _summary(record, extra)
    entry["State"] = _HOLE
    del entry["Status"]
    text = json.dumps(entry, separators=(",", ":"))
    if text.count(_MARK) != 1:  # a label or option carrying the mark itself: no keeping, no splicing
        raise _Unkeepable
    head, _, tail = text.partition(_MARK)
    return head + '"State":', tail


class _Unkeepable(Exception):
    pass
