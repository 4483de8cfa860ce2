"""Cgroup behaviour runc's own suite checks (cgroups.bats, exec.bats, update.bats at v1.1.5).

Each passes with skiff-lowlevel and with runc (``SKIFF_TEST_RUNTIME=runc``): a hybrid host's
cgroup2 folder joined by the init and every exec, ``exec --cgroup``/``--ignore-paused``/
``--additional-gids``, the warning for a cgroup that already has tasks, the refusal of a frozen
one, ``linux.resources.unified`` on v1, ``update --cpu-share``/``--cpu-rt-*``, and device rule
access strings with letters the kernel does not know.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.integration.lowlevel.conftest import CGROUP_ROOT, Runtime, cgroup_file, wait_until

UNIFIED = CGROUP_ROOT / "unified"


def cgroup_v1() -> bool:
    return not (CGROUP_ROOT / "cgroup.controllers").exists()


def needs_v1() -> None:
    if not cgroup_v1():
        pytest.skip("host runs cgroup v2")


def own_cgroup_lines(text: str) -> dict[str, str]:
    """/proc/<pid>/cgroup as {controllers: path}; the cgroup2 line's key is ""."""
    out = {}
    for line in text.splitlines():
        _, controllers, path = line.split(":", 2)
        out[controllers] = path
    return out


def test_hybrid_unified_folder_joined_by_init_and_exec(rt: Runtime) -> None:
    needs_v1()
    if not (UNIFIED / "cgroup.procs").exists():
        pytest.skip("no cgroup2 hierarchy at /sys/fs/cgroup/unified (not a hybrid host)")
    cid, bundle, spec = rt.start_container(["sleep", "60"])
    path = spec["linux"]["cgroupsPath"]
    init = own_cgroup_lines(Path(f"/proc/{rt.state(cid)['pid']}/cgroup").read_text())
    assert init[""] == path, init
    r = rt.cmd("exec", cid, "cat", "/proc/self/cgroup").ok()
    lines = own_cgroup_lines(r.stdout)
    # Every hierarchy, the cgroup2 one and name=systemd included, puts the exec in the container's.
    assert all(p == path for p in lines.values()), lines
    # Joined, not mounted: inside the container /sys/fs/cgroup shows the v1 hierarchies only.
    r = rt.cmd("exec", cid, "ls", "/sys/fs/cgroup").ok()
    assert "unified" not in r.stdout.split(), r.stdout
    rt.cmd("delete", "--force", cid).ok()
    assert not (UNIFIED / path.lstrip("/")).exists()


def test_exec_cgroup_joins_sub_cgroups_and_refuses_escapes(rt: Runtime) -> None:
    needs_v1()

    def writable_cgroups(spec: dict[str, Any]) -> None:
        for m in spec["mounts"]:
            if m["type"] == "cgroup":
                m["options"] = [o for o in m["options"] if o != "ro"]

    cid, bundle, spec = rt.start_container(["sleep", "60"], edit=writable_cgroups)
    path = spec["linux"]["cgroupsPath"]
    r = rt.cmd("exec", "--cgroup", "..", cid, "true")
    assert r.returncode != 0 and " .. is not a sub cgroup path" in r.stderr, r
    r = rt.cmd("exec", "--cgroup", "nonexistent", cid, "true")
    assert r.returncode != 0, r
    assert " adding pid " in r.stderr and "/nonexistent/cgroup.procs: no such file " in r.stderr, r
    r = rt.cmd("exec", "--cgroup", "whaaat:/", cid, "true")
    assert r.returncode != 0 and "unknown controller " in r.stderr, r
    rt.cmd("exec", cid, "mkdir", "/sys/fs/cgroup/memory/submem").ok()
    r = rt.cmd("exec", "--cgroup", "memory:submem", cid, "cat", "/proc/self/cgroup").ok()
    lines = own_cgroup_lines(r.stdout)
    assert lines["memory"] == path + "/submem", lines
    assert lines["pids"] == path, lines
    r = rt.cmd("exec", "--cgroup", "/", cid, "cat", "/proc/self/cgroup").ok()
    assert own_cgroup_lines(r.stdout)["memory"] == path


def test_exec_ignore_paused_waits_for_resume(rt: Runtime) -> None:
    cid, bundle, _ = rt.start_container(["sleep", "60"])
    rt.cmd("pause", cid).ok()
    r = rt.cmd("exec", cid, "echo", "ok")
    assert r.returncode != 0 and "cannot exec in a paused container" in r.stderr, r
    resumed = threading.Event()

    def resume_when_blocked() -> None:
        # Resume once the exec is waiting in the frozen cgroup (its process shows up there).
        wait_until(lambda: len(rt.cmd("ps", "--format", "json", cid).stdout.split(",")) > 1, 10)
        rt.cmd("resume", cid)
        resumed.set()

    t = threading.Thread(target=resume_when_blocked)
    t.start()
    try:
        r = rt.cmd("exec", "--ignore-paused", cid, "echo", "ok")
    finally:
        t.join(timeout=20)
    assert resumed.is_set()
    assert r.returncode == 0 and r.stdout.strip() == "ok", r


def test_exec_additional_gids(rt: Runtime) -> None:
    cid, bundle, _ = rt.start_container(["sleep", "60"])
    gids = ("--additional-gids", "100", "--additional-gids", "65534")
    r = rt.cmd("exec", "--user", "1000:1000", *gids, cid, "id", "-G").ok()
    assert r.stdout.split() == ["1000", "100", "65534"], r


def test_create_warns_about_a_cgroup_with_tasks(rt: Runtime) -> None:
    cid1, bundle1, spec1 = rt.start_container(["sleep", "60"])

    def same_cgroup(spec: dict[str, Any]) -> None:
        spec["linux"]["cgroupsPath"] = spec1["linux"]["cgroupsPath"]

    cid2, bundle2, _ = rt.bundle(["sleep", "60"], edit=same_cgroup)
    r = rt.cmd("create", "--bundle", str(bundle2), cid2)
    r.ok()
    assert "container's cgroup is not empty: 1 process(es) found" in r.stderr, r
    assert "level=warning" in r.stderr, r


def test_create_refuses_a_frozen_cgroup(rt: Runtime) -> None:
    cid, bundle, spec = rt.bundle(["true"])
    rel = spec["linux"]["cgroupsPath"].lstrip("/")
    if cgroup_v1():
        folder, freeze, value = CGROUP_ROOT / "freezer" / rel, "freezer.state", "FROZEN"
    else:
        folder, freeze, value = CGROUP_ROOT / rel, "cgroup.freeze", "1"
    folder.mkdir(parents=True)
    (folder / freeze).write_text(value)
    r = rt.cmd("create", "--bundle", str(bundle), cid)
    assert r.returncode == 1 and "container's cgroup unexpectedly frozen" in r.stderr, r
    assert rt.cmd("state", cid).returncode != 0
    # Refused before anything was made: the folder is the test's, still there and frozen.
    assert folder.is_dir()


def test_unified_resources_on_v1_are_an_invalid_configuration(rt: Runtime) -> None:
    needs_v1()

    def edit(spec: dict[str, Any]) -> None:
        spec["linux"]["resources"]["unified"] = {"memory.min": "131072"}

    cid, bundle, _ = rt.bundle(["true"], edit=edit)
    r = rt.create(cid, bundle, out=bundle.parent / "out")
    assert r.returncode != 0 and "invalid configuration" in r.stderr, r
    rt.assert_nothing_left(cid, bundle)


def test_update_cpu_share_and_realtime_flags(rt: Runtime) -> None:
    needs_v1()
    cid, bundle, spec = rt.start_container(["sleep", "60"])
    path = spec["linux"]["cgroupsPath"]
    rt.cmd("update", "--cpu-share", "200", cid).ok()
    assert cgroup_file("cpu", path, "cpu.shares") == "200"
    if not (CGROUP_ROOT / "cpu" / "cpu.rt_period_us").exists():
        return  # no CONFIG_RT_GROUP_SCHED
    # A child's real-time budget must fit in its parent's, which starts at 0.
    parent = CGROUP_ROOT / "cpu" / os.path.dirname(path).lstrip("/")
    if int((parent / "cpu.rt_runtime_us").read_text()) < 950000:
        (parent / "cpu.rt_runtime_us").write_text("950000")
    rt.cmd("update", "--cpu-rt-period", "900001", "--cpu-rt-runtime", "600001", cid).ok()
    assert cgroup_file("cpu", path, "cpu.rt_period_us") == "900001"
    assert cgroup_file("cpu", path, "cpu.rt_runtime_us") == "600001"


def test_device_rule_access_with_unknown_letters(rt: Runtime) -> None:
    """runc's update.bats denies "rwa" on /dev/kmsg: only r, w and m mean anything to the kernel;
    a node listed in linux.devices gets no allow rule of its own, so it stays unreadable."""
    needs_v1()

    def edit(spec: dict[str, Any]) -> None:
        spec["linux"]["resources"]["devices"] = [
            {"allow": False, "access": "rwm"},
            {"allow": False, "type": "c", "major": 1, "minor": 11, "access": "rwa"},
        ]
        spec["linux"]["devices"] = [{"path": "/dev/kmsg", "type": "c", "major": 1, "minor": 11}]

    cid, bundle, spec = rt.start_container(["sleep", "60"], edit=edit)
    rules = cgroup_file("devices", spec["linux"]["cgroupsPath"], "devices.list").splitlines()
    assert not any(rule.startswith("c 1:11 ") for rule in rules), rules
    r = rt.cmd("exec", cid, "sh", "-c", "head -c 1 /dev/kmsg >/dev/null 2>&1 && echo read || echo denied").ok()
    assert r.stdout.strip() == "denied", r
    # An update of something else leaves the device rules as they were.
    rt.cmd("update", "--pids-limit", "30", cid).ok()
    r = rt.cmd("exec", cid, "sh", "-c", "head -c 1 /dev/kmsg >/dev/null 2>&1 && echo read || echo denied").ok()
    assert r.stdout.strip() == "denied", r
