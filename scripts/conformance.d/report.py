"""Counting one engine's results and comparing two: the tests passing on dockerd but not on Skiff, by cause."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

OUTCOMES = ("passed", "failed", "error", "skipped", "xfailed", "xpassed")

_NORMALISE = [
    (re.compile(r"dockerpytest_[0-9a-z_]+"), "<name>"),
    (re.compile(r"\b[0-9a-f]{12,64}\b"), "<id>"),
    (re.compile(r"\b\d+\.\d+\.\d+\.\d+(/\d+)?\b"), "<ip>"),
    (re.compile(r"0x[0-9a-f]+"), "<addr>"),
    (re.compile(r"\b\d{3,}\b"), "<n>"),
]
# an HTTP error's status and route say more than the rest of its first line
_HTTP = re.compile(r"^(docker\.errors\.\w+|requests\.exceptions\.\w+): (\d{3}) (?:Client|Server) Error for "
                   r"http\+docker://localhost(?:/v[\d.]+)?([^ :?]*)")


def load(path: Path) -> dict[str, dict[str, Any]]:
    """nodeid -> entry, from the JSON lines the pytest plugin wrote (absent file: nothing ran)."""
    tests: dict[str, dict[str, Any]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                entry = json.loads(line)
                tests[entry["nodeid"]] = entry
    return tests


def counts(tests: dict[str, dict[str, Any]]) -> dict[str, int]:
    out = dict.fromkeys(OUTCOMES, 0)
    for entry in tests.values():
        out[entry["outcome"]] += 1
    return out


def cause(entry: dict[str, Any]) -> str:
    """A failure's group: its exception and first message line with ids, names and numbers taken out."""
    message = entry.get("message") or entry["outcome"]
    match = _HTTP.match(message)
    if match:
        kind, status, route = match.groups()
        route = _NORMALISE[1][0].sub("<id>", _NORMALISE[0][0].sub("<name>", route))
        detail = message.split(": ", 2)[-1] if message.count(": ") >= 2 else ""
        detail = re.sub(r'^(?:Bad Request|Not Found|Conflict|Internal Server Error|Not Implemented|Method Not Allowed)'
                        r'\s*\("?', "", detail)
        detail = detail[:-2] if detail.endswith('")') else detail
        for pattern, repl in _NORMALISE:
            detail = pattern.sub(repl, detail)
        return f"{kind} {status} {route}: {detail[:160]}"
    for pattern, repl in _NORMALISE:
        message = pattern.sub(repl, message)
    return message[:200]


def compare(reference: dict[str, dict[str, Any]], skiff: dict[str, dict[str, Any]],
            subset: bool = False) -> list[dict[str, Any]]:
    """Groups of tests passing on the reference and not on Skiff, the largest group first.

    ``subset``: Skiff ran a chosen part only (-k), so a test it did not run is no failure."""
    groups: dict[str, dict[str, Any]] = {}
    for nodeid, ref in sorted(reference.items()):
        if ref["outcome"] != "passed" or (subset and nodeid not in skiff):
            continue
        mine = skiff.get(nodeid, {"nodeid": nodeid, "outcome": "not run", "message": "not run (the run ended first)"})
        if mine["outcome"] == "passed":
            continue
        key = cause(mine)
        group = groups.setdefault(key, {"cause": key, "tests": []})
        group["tests"].append({"nodeid": nodeid, "outcome": mine["outcome"], "phase": mine.get("phase"),
                               "message": mine.get("message"), "longrepr": mine.get("longrepr")})
    return sorted(groups.values(), key=lambda g: (-len(g["tests"]), g["cause"]))


def format_counts(name: str, tests: dict[str, dict[str, Any]]) -> str:
    c = counts(tests)
    return (f"{name:<8} {len(tests):4d} tests: {c['passed']} passed, {c['failed']} failed, {c['error']} errors, "
            f"{c['skipped']} skipped, {c['xfailed']} xfailed, {c['xpassed']} xpassed")


def format_groups(groups: list[dict[str, Any]]) -> str:
    total = sum(len(g["tests"]) for g in groups)
    lines = [f"{total} tests pass on dockerd but not on Skiff, in {len(groups)} groups:"]
    for group in groups:
        lines.append(f"\n[{len(group['tests'])}] {group['cause']}")
        for test in group["tests"]:
            lines.append(f"    {test['nodeid'].removeprefix('tests/integration/')} ({test['outcome']})")
    return "\n".join(lines)
