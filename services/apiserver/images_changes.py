"""``--change`` instructions (docker import and commit) as a partial image Config."""

from __future__ import annotations

import json
import shlex
from typing import Any

from services.common.errors import InvalidArgument

SUPPORTED = ("CMD", "ENTRYPOINT", "ENV", "EXPOSE", "LABEL", "ONBUILD", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR")


def _command(rest: str) -> list[str]:
    """Exec form (a JSON array) or shell form (run by ``/bin/sh -c``), as a Dockerfile."""
    if rest.startswith("["):
        try:
            value = json.loads(rest)
        except ValueError:
            value = None
        if isinstance(value, list) and all(isinstance(x, str) for x in value):
            return value
    return ["/bin/sh", "-c", rest]


def _pairs(rest: str) -> list[tuple[str, str]]:
    words = shlex.split(rest)
    if words and "=" not in words[0]:
        # The old form: ``ENV key value with spaces``.
        return [(words[0], rest.split(None, 1)[1] if len(words) > 1 else "")]
    return [(k, v) for k, _, v in (w.partition("=") for w in words)]


def apply_changes(changes: list[str], config: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = dict(config or {})
    for change in changes:
        keyword, _, rest = change.strip().partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if not keyword:
            continue
        if keyword not in SUPPORTED:
            raise InvalidArgument(f"{keyword} is not a valid change command")
        if keyword in ("CMD", "ENTRYPOINT"):
            out["Cmd" if keyword == "CMD" else "Entrypoint"] = _command(rest)
        elif keyword == "ENV":
            env = [e for e in out.get("Env") or []]
            for k, v in _pairs(rest):
                env = [e for e in env if e.partition("=")[0] != k] + [f"{k}={v}"]
            out["Env"] = env
        elif keyword == "LABEL":
            out["Labels"] = {**(out.get("Labels") or {}), **dict(_pairs(rest))}
        elif keyword == "EXPOSE":
            ports = dict(out.get("ExposedPorts") or {})
            for port in rest.split():
                ports[port if "/" in port else f"{port}/tcp"] = {}
            out["ExposedPorts"] = ports
        elif keyword == "VOLUME":
            paths = _command(rest) if rest.startswith("[") else rest.split()
            out["Volumes"] = {**(out.get("Volumes") or {}), **{p: {} for p in paths}}
        elif keyword == "ONBUILD":
            out["OnBuild"] = [*(out.get("OnBuild") or []), rest]
        else:
            out[{"USER": "User", "WORKDIR": "WorkingDir", "STOPSIGNAL": "StopSignal"}[keyword]] = rest
    return out
