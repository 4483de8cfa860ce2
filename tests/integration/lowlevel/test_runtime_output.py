"""Output formats byte for byte as runc's, which scripts match: Go's compact JSON (no space after
``:`` or ``,``) for ``list --format json``, ``ps --format json`` and ``events``; ``state`` indented
by two spaces with no final newline; runc's key order; its tabwriter table."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tests.integration.lowlevel.conftest import Runtime

STATE_KEYS = ["ociVersion", "id", "pid", "status", "bundle", "rootfs", "created", "owner"]
# Go's time.RFC3339Nano: UTC here, the fraction without its trailing zeros.
RFC3339_NANO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d*[1-9])?Z$")


def assert_compact(line: str) -> Any:
    value = json.loads(line)
    assert line == json.dumps(value, separators=(",", ":"), ensure_ascii=False), line
    return value


def test_state_is_indented_without_final_newline(rt: Runtime) -> None:
    cid, bundle, _ = rt.start_container(["sleep", "60"])
    out = rt.cmd("state", cid).ok().stdout
    assert not out.endswith("\n"), repr(out)
    state = json.loads(out)
    assert out == json.dumps(state, indent=2), out
    assert list(state) == STATE_KEYS, list(state)
    assert state["id"] == cid and state["status"] == "running" and state["bundle"] == str(bundle)
    assert RFC3339_NANO.match(state["created"]), state["created"]


def test_state_puts_annotations_before_owner(rt: Runtime) -> None:
    def edit(spec: dict[str, Any]) -> None:
        spec["annotations"] = {"org.example.key": "value"}

    cid, _, _ = rt.start_container(["sleep", "60"], edit=edit)
    state = json.loads(rt.cmd("state", cid).ok().stdout)
    assert list(state)[-2:] == ["annotations", "owner"], list(state)
    assert state["annotations"] == {"org.example.key": "value"}


def test_list_json_is_compact_with_runcs_keys(rt: Runtime) -> None:
    empty = rt.cmd("list", "--format", "json").ok().stdout
    assert empty == "null\n", repr(empty)  # Go's nil slice
    cid, _, _ = rt.start_container(["sleep", "60"])
    out = rt.cmd("list", "--format", "json").ok().stdout
    assert out.endswith("\n") and out.count("\n") == 1, repr(out)
    (entry,) = assert_compact(out.strip())
    assert list(entry) == STATE_KEYS, list(entry)
    assert entry["id"] == cid and entry["owner"] == "root"
    assert rt.cmd("list", "-q").ok().stdout == f"{cid}\n"


def test_list_table_is_runcs_tabwriter(rt: Runtime) -> None:
    cid, bundle, _ = rt.start_container(["sleep", "60"])
    lines = rt.cmd("list").ok().stdout.splitlines()
    assert len(lines) == 2, lines
    header, row = lines
    # minwidth 12, padding 3: a column is as wide as its widest cell plus 3, at least 12
    assert header.startswith("ID".ljust(max(12, len(cid) + 3)) + "PID         STATUS      BUNDLE"), header
    assert header.endswith("   OWNER"), header
    state = json.loads(rt.cmd("state", cid).ok().stdout)
    for name, value in (("PID", str(state["pid"])), ("STATUS", "running"), ("BUNDLE", str(bundle))):
        assert row[header.index(name) :].startswith(value), (name, row)
    assert row.split()[-1] == "root"


def test_ps_json_and_events_stats_are_compact(rt: Runtime) -> None:
    cid, _, _ = rt.start_container(["sleep", "60"])
    pid = json.loads(rt.cmd("state", cid).ok().stdout)["pid"]
    ps = rt.cmd("ps", "--format", "json", cid).ok().stdout
    assert ps == f"[{pid}]\n", repr(ps)
    events = rt.cmd("events", "--stats", cid).ok().stdout
    assert events.endswith("\n") and events.count("\n") == 1, repr(events[:200])
    record = assert_compact(events.strip())
    assert list(record) == ["type", "id", "data"] and record["type"] == "stats" and record["id"] == cid
    assert {"cpu", "memory", "pids"} <= set(record["data"]), list(record["data"])


def test_spec_is_written_with_tabs_and_no_final_newline(rt: Runtime, tmp_path: Path) -> None:
    rt.cmd("spec", "--bundle", str(tmp_path)).ok()
    text = (tmp_path / "config.json").read_text()
    assert text.startswith('{\n\t"ociVersion": '), text[:40]
    assert text.endswith("\n}"), repr(text[-10:])
    spec = json.loads(text)
    assert text == json.dumps(spec, indent="\t"), "not Go's MarshalIndent with a tab"


def test_events_follow_at_the_interval_in_compact_json(rt: Runtime) -> None:
    import select
    import subprocess
    import time

    cid, _, _ = rt.start_container(["sleep", "60"])
    proc = subprocess.Popen(
        [*rt.argv, "--root", str(rt.root), "events", "--interval", "100ms", cid],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    rt.procs.append(proc)
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 15
    while len(lines) < 2 and time.monotonic() < deadline:
        if select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))[0]:
            line = proc.stdout.readline().decode()
            if not line:
                break
            lines.append(line)
    proc.kill()
    proc.wait(timeout=10)
    assert len(lines) == 2, lines
    for line in lines:
        record = assert_compact(line.strip())
        assert record["type"] == "stats" and record["id"] == cid


def test_events_refuses_a_bad_interval(rt: Runtime) -> None:
    cid, _, _ = rt.start_container(["sleep", "60"])
    r = rt.cmd("events", "--interval", "5x", cid)
    assert r.returncode == 1, r
    assert 'invalid value "5x" for flag -interval' in r.stderr.replace('\\"', '"'), r
    assert r.stdout.startswith("Incorrect Usage: invalid value"), r


def test_events_stats_keys_in_runcs_order(rt: Runtime) -> None:
    """Struct fields in runc's order, maps (memory.raw) with their keys sorted, as Go prints them."""
    cid, _, _ = rt.start_container(["sleep", "60"])
    data = json.loads(rt.cmd("events", "--stats", cid).ok().stdout)["data"]
    assert list(data)[:4] == ["cpu", "cpuset", "memory", "pids"], list(data)
    cpuset = list(data["cpuset"])
    assert cpuset[:1] == ["cpus"], cpuset
    if "cpu_exclusive" in cpuset:  # cgroup v1
        assert cpuset[:3] == ["cpus", "cpu_exclusive", "mems"], cpuset
    raw = list(data["memory"].get("raw") or {})
    assert raw == sorted(raw), raw
