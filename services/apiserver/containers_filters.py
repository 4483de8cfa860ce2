"""GET /containers/json's filters as dockerd 20.10 takes them: every key checked (an unknown one, a bad
status or exit code refused in dockerd's words), and those the daemon's list does not apply (ancestor,
before, since, exited, volume, network, publish, expose) applied here to the rendered entries."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from services.common.errors import InvalidArgument

ACCEPTED = ("ancestor", "before", "expose", "exited", "health", "id", "isolation", "is-task", "label", "name",
            "network", "publish", "since", "status", "volume")
STATUSES = ("created", "restarting", "running", "removing", "paused", "exited", "dead")
# Applied here, on the entries: the daemon's ListFilters has id, name, label, status and health.
HERE = ("ancestor", "before", "since", "exited", "volume", "network", "publish", "expose")
EXITED = re.compile(r"^Exited \((-?\d+)\)")
Entry = dict[str, Any]


def check(filters: dict[str, list[str]]) -> None:
    for key, values in filters.items():
        if key not in ACCEPTED:
            raise InvalidArgument(f"Invalid filter '{key}'")
        for value in values:
            if key == "status" and value not in STATUSES:
                raise InvalidArgument(f"Invalid filter 'status={value}'")
            if key == "exited" and not re.fullmatch(r"-?\d+", value):
                raise InvalidArgument(f'strconv.Atoi: parsing "{value}": invalid syntax')
            if key in ("publish", "expose"):
                ports(key, value)


def ports(key: str, value: str) -> set[tuple[int, str]]:
    """``80``, ``80/udp``, ``8000-8010/tcp`` as (port, proto) pairs (dockerd's portOp)."""
    if ":" in value:
        raise InvalidArgument(f"filter for '{key}' should not contain ':': {value}")
    number, _, proto = value.partition("/")
    first, _, last = number.partition("-")
    if not first.isdigit() or (last and not last.isdigit()):
        raise InvalidArgument(f"invalid port range: {number}" if last else f"invalid start port '{number}'")
    return {(p, proto or "tcp") for p in range(int(first), int(last or first) + 1)}


def wanted_here(filters: dict[str, list[str]]) -> bool:
    return any(key in filters for key in HERE)


def _any(values: list[str], test: Callable[[str], bool]) -> bool:
    return any(test(v) for v in values)


def _exit_code(entry: Entry) -> int | None:
    found = EXITED.match(entry.get("Status") or "")
    return int(found.group(1)) if found else None


def _has_volume(entry: Entry, value: str) -> bool:
    return any(value in (m.get("Name") or m.get("Source"), m.get("Destination")) for m in entry.get("Mounts") or [])


def _on_network(entry: Entry, value: str) -> bool:
    networks = (entry.get("NetworkSettings") or {}).get("Networks") or {}
    return value in networks or any((n.get("NetworkID") or "").startswith(value) for n in networks.values() if n)


def _port_pairs(entry: Entry, public: bool) -> set[tuple[int, str]]:
    key = "PublicPort" if public else "PrivatePort"
    return {(p[key], p.get("Type", "tcp")) for p in entry.get("Ports") or [] if p.get(key)}


def apply(entries: list[Entry], filters: dict[str, list[str]], ancestors: set[str],
          before: str | None, since: str | None, running_only: bool) -> list[Entry]:
    """``entries`` newest first, all of them when before/since are given (positions in the whole
    list); ``ancestors`` the image ids the ancestor values name; ``before``/``since`` container ids;
    ``running_only``: a list without all= keeps running (and paused, restarting) containers."""
    if before is not None:  # only those created before it: after it in the list
        ids = [e["Id"] for e in entries]
        entries = entries[ids.index(before) + 1:] if before in ids else []
    if since is not None:
        ids = [e["Id"] for e in entries]
        entries = entries[:ids.index(since)] if since in ids else entries
    published = set().union(*(ports("publish", v) for v in filters.get("publish", [])))
    exposed = set().union(*(ports("expose", v) for v in filters.get("expose", [])))
    out = []
    for e in entries:
        if running_only and e.get("State") not in ("running", "paused", "restarting"):
            continue
        if "ancestor" in filters and e.get("ImageID") not in ancestors:
            continue
        if "exited" in filters and (e.get("State") != "exited" or str(_exit_code(e)) not in filters["exited"]):
            continue
        if "volume" in filters and not _any(filters["volume"], lambda v, e=e: _has_volume(e, v)):
            continue
        if "network" in filters and not _any(filters["network"], lambda v, e=e: _on_network(e, v)):
            continue
        # dockerd: the entry's Ports, a publish or an expose value matching is enough.
        if (published or exposed) and not (published & _port_pairs(e, public=True)
                                           or exposed & _port_pairs(e, public=False)):
            continue
        out.append(e)
    return out
