"""The entries of Docker's ``GET /containers/json``, rendered in the daemon: one JSON blob over gRPC.

Sending the records themselves cost more than the rest of the call together: betterproto encodes
and decodes a container record field by field in Python (about 1 ms a record each way), so a list of
50 took 60+ ms. The shapes come from services.dockermodel, pure functions over the daemon's
messages (stdlib and generated code only, no HTTP), so the apiserver and the daemon render them alike.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from services.dockermodel.render import container_summary, summary_fixed
from services.gen.skiff.daemon.v1 import Container


class Summaries:
    """Renders the list, keeping per record object the summary fields fixed at create (image, command,
    labels, mounts...): each betterproto attribute read runs Python code, and keeping these halves the
    work of a list. One per daemon (server.build_daemon), beside the records it renders."""

    def __init__(self) -> None:
        self._fixed: dict[int, tuple[Container, dict[str, Any]]] = {}

    def render(self, records: Iterable[Container], more_names: dict[str, list[str]] | None = None) -> bytes:
        """``more_names``: by container id, names beside its own (legacy links' ``/<parent>/<alias>``)."""
        entries = []
        seen = set()
        for record in records:
            key = id(record)
            seen.add(key)
            kept = self._fixed.get(key)
            if kept is None or kept[0] is not record:
                kept = (record, summary_fixed(record))
                self._fixed[key] = kept
            entry = container_summary(record, kept[1])
            if more_names and record.id in more_names:
                entry["Names"] = [*entry["Names"], *more_names[record.id]]
            entries.append(entry)
        if len(self._fixed) > 2 * len(seen) + 64:
            # Removed containers' entries go (the records kept alive here would otherwise grow forever).
            for key in [k for k in self._fixed if k not in seen]:
                del self._fixed[key]
        return json.dumps(entries, separators=(",", ":")).encode()
