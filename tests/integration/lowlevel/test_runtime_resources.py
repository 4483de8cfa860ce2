"""Cgroup limits through config.json: the files hold the asked values, a memory limit kills a greedy
process (and the OOM is reported), a pids limit stops a fork bomb."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.integration.lowlevel.conftest import CGROUP_ROOT, Runtime, cgroup_file, wait_until

MiB = 1024 * 1024


def test_cgroup_files_hold_the_asked_values(rt: Runtime) -> None:
    def edit(spec: dict[str, Any]) -> None:
        spec["linux"]["resources"].update(
            memory={"limit": 64 * MiB, "reservation": 32 * MiB},
            cpu={"shares": 512, "quota": 50000, "period": 100000, "cpus": "0", "mems": "0"},
            pids={"limit": 42},
        )

    cid, _, spec = rt.start_container(["sleep", "60"], edit=edit)
    cg = spec["linux"]["cgroupsPath"]
    assert cgroup_file("memory", cg, "memory.limit_in_bytes") == str(64 * MiB)
    assert cgroup_file("memory", cg, "memory.soft_limit_in_bytes") == str(32 * MiB)
    assert cgroup_file("cpu", cg, "cpu.shares") == "512"
    assert cgroup_file("cpu", cg, "cpu.cfs_quota_us") == "50000"
    assert cgroup_file("cpu", cg, "cpu.cfs_period_us") == "100000"
    assert cgroup_file("cpuset", cg, "cpuset.cpus") == "0"
    assert cgroup_file("pids", cg, "pids.max") == "42"
    # The container's init is in each of them.
    pid = rt.state(cid)["pid"]
    for subsystem in ("memory", "cpu", "cpuset", "pids"):
        procs = cgroup_file(subsystem, cg, "cgroup.procs").split()
        assert str(pid) in procs, subsystem


def test_memory_limit_kills_greedy_process_and_reports_oom(rt: Runtime) -> None:
    limit = 24 * MiB

    def edit(spec: dict[str, Any]) -> None:
        memory: dict[str, Any] = {"limit": limit}
        if (CGROUP_ROOT / "memory" / "memory.memsw.limit_in_bytes").exists():
            memory["swap"] = limit  # no escape into swap
        spec["linux"]["resources"]["memory"] = memory

    script = "dd if=/dev/zero of=/dev/null bs=64M count=1; echo dd-status=$?"
    cid, bundle, spec = rt.bundle(["sh", "-c", script], edit=edit)
    out = bundle.parent / "out"
    rt.create(cid, bundle, out=out).ok()
    events_out = rt.prefix / "events.out"
    events = rt.popen("events", cid, stdout=events_out)
    # Let ``events`` open the container's cgroup before the OOM can happen (no blind sleep: the
    # runtime has done so once it holds a descriptor on the memory cgroup: its OOM notification).
    cg = spec["linux"]["cgroupsPath"]
    assert wait_until(lambda: _holds_cgroup_fd(events.pid, cg), 10.0), "events never watched the cgroup"
    rt.cmd("start", cid).ok()
    rt.wait_status(cid, "stopped")
    text = out.read_text()
    assert "dd-status=" in text and "dd-status=0" not in text, text
    oom_control = dict(line.split() for line in cgroup_file("memory", cg, "memory.oom_control").splitlines())
    assert int(oom_control["oom_kill"]) >= 1, oom_control
    assert cgroup_file("memory", cg, "memory.limit_in_bytes") == str(limit)
    reported = wait_until(lambda: '"oom"' in events_out.read_text(), 10.0)
    assert reported, events_out.read_text()
    kinds = [json.loads(line)["type"] for line in events_out.read_text().splitlines() if line.startswith("{")]
    assert "oom" in kinds
    rt.cmd("delete", cid).ok()
    wait_until(lambda: events.poll() is not None, 5.0)


def _holds_cgroup_fd(pid: int, cgroups_path: str) -> bool:
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if cgroups_path in str(fd.readlink()):
                    return True
            except OSError:
                continue
    except OSError:
        return False
    return False


def test_pids_limit_stops_fork_bomb(rt: Runtime) -> None:
    def edit(spec: dict[str, Any]) -> None:
        spec["linux"]["resources"]["pids"] = {"limit": 10}

    bomb = "i=0; while [ $i -lt 50 ]; do sleep 60 & i=$((i+1)); done; echo all-forked"
    cid, bundle, spec = rt.bundle(["sh", "-c", f"sh -c '{bomb}'; echo bomb-status=$?; exit 0"], edit=edit)
    out = bundle.parent / "out"
    rt.create(cid, bundle, out=out).ok()
    rt.cmd("start", cid).ok()
    rt.wait_status(cid, "stopped")
    text = out.read_text()
    assert "bomb-status=" in text, text
    assert "all-forked" not in text, text
    assert "fork" in text, text  # busybox sh: "can't fork: Resource temporarily unavailable"
    cg = spec["linux"]["cgroupsPath"]
    assert cgroup_file("pids", cg, "pids.max") == "10"
    events = dict(line.split() for line in cgroup_file("pids", cg, "pids.events").splitlines())
    assert int(events["max"]) >= 1, events
    rt.cmd("delete", cid).ok()
    rt.assert_nothing_left(cid, bundle)


def test_events_stats_once(rt: Runtime) -> None:
    cid, _, _ = rt.start_container(
        ["sleep", "60"], edit=lambda s: s["linux"]["resources"].update(memory={"limit": 64 * MiB}, pids={"limit": 20})
    )
    r = rt.cmd("events", "--stats", cid).ok()
    event = json.loads(r.stdout.splitlines()[0])
    assert event["type"] == "stats"
    assert event["id"] == cid
    data = event["data"]
    assert data["pids"]["current"] >= 1
    assert data["pids"]["limit"] == 20
    assert data["memory"]["usage"]["limit"] == 64 * MiB
