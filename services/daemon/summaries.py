"""The entries of Docker's ``GET /containers/json``, rendered in the daemon: one JSON blob over gRPC.

Sending the records themselves cost more than the rest of the call together: betterproto encodes
and decodes a container record field by field in Python (about 1 ms a record each way), so a list of
50 took 60+ ms. The shapes come from the apiserver's model modules, which are pure functions over
the daemon's messages (stdlib and generated code only, no HTTP), so both sides render them alike.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from services.apiserver.models import container_summary
from services.gen.skiff.daemon.v1 import Container


def summaries_json(records: Iterable[Container]) -> bytes:
    return json.dumps([container_summary(r) for r in records], separators=(",", ":")).encode()
