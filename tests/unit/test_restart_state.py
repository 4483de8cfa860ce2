"""The restart policies' per-container state goes with the container (a soak's tracemalloc found an
entry kept for every container ever started)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from services.daemon.restart import RestartPolicies


def test_destroy_forgets_the_containers_back_off_state() -> None:
    policies = RestartPolicies(containers=None)  # type: ignore[arg-type]
    entries: list[Any] = [SimpleNamespace(record=SimpleNamespace(id=f"{i:064x}")) for i in range(3)]
    for entry in entries:
        policies.on_event("start", entry, {})
    policies.delays[entries[0].record.id] = 0.2
    for entry in entries[:2]:
        policies.on_event("destroy", entry, {})
    assert list(policies.started_mono) == [entries[2].record.id]
    assert policies.delays == {}
