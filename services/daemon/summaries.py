"""The entries of Docker's ``GET /containers/json``, rendered in the daemon: one JSON blob over gRPC,
or rows (services/dockermodel/list_rows.py) over the list lane for the apiserver to keep.

Sending the records themselves cost more than the rest of the call together: betterproto encodes
and decodes a container record field by field in Python (about 1 ms a record each way), so a list of
50 took 60+ ms. The shapes come from services.dockermodel, pure functions over the daemon's
messages (stdlib and generated code only, no HTTP), so the apiserver and the daemon render them alike.

Each entry's JSON is kept between calls and made again only when its record was saved since
(``ContainerRecords.versions``), as dockerd's list reads the snapshot a container's last checkpoint
left in its view store: rendering read ~100 betterproto attributes a record, 6 ms of the daemon's
CPU per list of 50. Only State and Status are read at every call (a state change shows before its
save); Status's text is made from them when the list is rendered (it says "Up 3 seconds").
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from typing import Any

from services.dockermodel.list_rows import Row, render_rows
from services.dockermodel.render import STATUS_NAMES, container_summary, status_parts, summary_fixed
from services.gen.skiff.daemon.v1 import Container

_STATE_NAMES = {state: json.dumps(name) for state, name in STATUS_NAMES.items()}
_CREATED = json.dumps("created")


class Summaries:
    """Renders the list, keeping per record object its entry's JSON around State and Status, with the
    record's save count and the name it was rendered with. One per daemon (server.build_daemon)."""

    def __init__(self) -> None:
        self._kept: dict[int, tuple[Container, Any, str, str]] = {}

    def render(self, records: Iterable[Container], more_names: dict[str, list[str]] | None = None,
               versions: Mapping[str, int] | None = None) -> bytes:
        """The list's JSON now (gRPC's ListSummaries); arguments as :meth:`rows`."""
        return render_rows(self.rows(records, more_names, versions), time.time())[0]

    def rows(self, records: Iterable[Container], more_names: dict[str, list[str]] | None = None,
             versions: Mapping[str, int] | None = None) -> list[Row]:
        """``more_names``: by container id, names beside its own (legacy links' ``/<parent>/<alias>``);
        ``versions``: by container id, how many times its record was saved (None: render every entry)."""
        rows: list[Row] = []
        seen = set()
        for record in records:
            key = id(record)
            seen.add(key)
            extra = more_names.get(record.id) if more_names else None
            stamp = (versions.get(record.id, 0) if versions is not None else None, record.name, extra)
            kept = self._kept.get(key)
            if kept is None or kept[0] is not record or kept[1] != stamp or stamp[0] is None:
                head, tail = _entry_around_state(record, extra)
                kept = (record, stamp, head, tail)
                self._kept[key] = kept
            state = record.state.status
            prefix, since, postfix = status_parts(record)
            rows.append((f'{kept[2]}{_STATE_NAMES.get(state, _CREATED)},"Status":', prefix, since, postfix, kept[3]))
        if len(self._kept) > 2 * len(seen) + 64:
            # Removed containers' entries go (the records kept alive here would otherwise grow forever).
            for key in [k for k in self._kept if k not in seen]:
                del self._kept[key]
        return rows


def _entry_around_state(record: Container, extra: list[str] | None) -> tuple[str, str]:
    """The entry's JSON before State's value (ending in ``"State":``) and after Status's (from the
    comma that follows it), keys in container_summary's order."""
    entry = container_summary(record, summary_fixed(record))
    if extra:
        entry["Names"] = [*entry["Names"], *extra]
    keys = list(entry)
    at = keys.index("State")
    if keys[at + 1] != "Status":
        raise AssertionError("container_summary puts Status right after State")
    before = {k: entry[k] for k in keys[:at]}
    after = {k: entry[k] for k in keys[at + 2:]}
    head = json.dumps(before, separators=(",", ":"))[:-1] + ',"State":' if before else '{"State":'
    tail = "," + json.dumps(after, separators=(",", ":"))[1:] if after else "}"
    return head, tail
