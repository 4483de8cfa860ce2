"""The runtime's cgroups against the real kernel: v1 hierarchies, and the hybrid cgroup2 mount.

Each test makes its own ``skiff-t-<uuid>`` cgroup holding a real busybox child, and removes both
even when it fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from services.common.errors import InvalidArgument, SyscallError
from services.lowlevel.cgroups import cgroup_version, open_cgroup
from services.lowlevel.cgroups import files as cgroups
from services.lowlevel.cgroups.files import CgroupBusy
from services.lowlevel.cgroups.v1 import V1Cgroup, v1_mounts
from services.lowlevel.cgroups.v2 import V2Cgroup
from tests.conftest import needs_root

BUSYBOX = "/bin/busybox"
UNIFIED = "/sys/fs/cgroup/unified"
MiB = 1024 * 1024


def wait_until(check: Callable[[], bool], seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    """A shell that waits for a line on stdin, burns a little CPU, then sleeps: it can be moved
    into a cgroup before it does anything worth measuring."""
    needs_root()
    if not os.path.exists(BUSYBOX):
        pytest.skip("needs /bin/busybox")
    script = "read x; i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; exec sleep 30"
    proc = subprocess.Popen([BUSYBOX, "sh", "-c", script], stdin=subprocess.PIPE)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        if proc.stdin:
            proc.stdin.close()


@pytest.fixture
def v1_group() -> Iterator[V1Cgroup]:
    """A nested v1 cgroup /skiff-t-<uuid>/c: the parent level exercises cpuset inheritance."""
    needs_root()
    if cgroup_version() != 1:
        pytest.skip("host runs cgroup v2")
    top = f"skiff-t-{uuid.uuid4().hex[:12]}"
    group = open_cgroup(f"/{top}/c", "ignored")
    assert isinstance(group, V1Cgroup)
    try:
        yield group
    finally:
        # Nothing may stay behind: kill leftovers, thaw, remove the leaf and the parent level.
        if "freezer" in group.paths() and os.path.isdir(group.paths()["freezer"]):
            group.thaw()
        cgroups.signal_pids(group.pids(), signal.SIGKILL)
        group.destroy()
        for mount in set(v1_mounts().values()):
            if os.path.isdir(f"{mount}/{top}"):
                os.rmdir(f"{mount}/{top}")


@pytest.fixture
def v2_group() -> Iterator[V2Cgroup]:
    """A cgroup in the hybrid host's controller-less cgroup2 mount: the core files (procs,
    freeze, kill, events) work there, so the v2 life cycle is exercised for real."""
    needs_root()
    if not os.path.exists(UNIFIED + "/cgroup.procs"):
        pytest.skip("no cgroup2 mount at /sys/fs/cgroup/unified")
    top = f"{UNIFIED}/skiff-t-{uuid.uuid4().hex[:12]}"
    group = V2Cgroup(top + "/c", root=UNIFIED)
    try:
        yield group
    finally:
        if os.path.exists(group.path + "/cgroup.freeze"):
            group.thaw()
        cgroups.signal_pids(group.pids(), signal.SIGKILL)
        group.destroy()
        if os.path.isdir(top):
            os.rmdir(top)


def release(proc: subprocess.Popen[bytes]) -> None:
    assert proc.stdin is not None
    proc.stdin.write(b"go\n")
    proc.stdin.flush()


def state_of(pid: int) -> str:
    return read(f"/proc/{pid}/stat").rsplit(")", 1)[1].split()[0]


# --- v1 ---------------------------------------------------------------------------------------


def test_v1_create_add_and_pids(v1_group: V1Cgroup, child: subprocess.Popen[bytes]) -> None:
    paths = v1_group.paths()
    mounted = set(v1_mounts())
    assert {"cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids"} <= mounted
    assert set(paths) == mounted
    v1_group.create()
    v1_group.create()  # idempotent
    for path in paths.values():
        assert os.path.isdir(path), path
    # Both levels inherited cpus/mems, or the add below would fail with ENOSPC.
    cpuset_root = v1_mounts()["cpuset"]
    assert read(paths["cpuset"] + "/cpuset.cpus") == read(cpuset_root + "/cpuset.cpus")
    assert read(os.path.dirname(paths["cpuset"]) + "/cpuset.mems") == read(cpuset_root + "/cpuset.mems")

    v1_group.add(child.pid)
    assert v1_group.pids() == [child.pid]
    lines = read(f"/proc/{child.pid}/cgroup").splitlines()
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers and any(c in paths for c in controllers.split(",")):
            assert path == v1_group.relpath, line


def test_v1_set_reads_back(v1_group: V1Cgroup, child: subprocess.Popen[bytes]) -> None:
    v1_group.create()
    v1_group.add(child.pid)
    p = v1_group.paths()
    resources = {
        "memory": {
            "limit": 64 * MiB,
            "reservation": 32 * MiB,
            "swappiness": 10,
            "disableOOMKiller": True,
            "kernel": 1 * MiB,  # deprecated: must be ignored, not fail
        },
        "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0", "mems": "0"},
        "pids": {"limit": 50},
        "blockIO": {
            "weight": 300,
            "throttleReadBpsDevice": [{"major": 254, "minor": 0, "rate": 10 * MiB}],
            "throttleWriteIOPSDevice": [{"major": 254, "minor": 0, "rate": 500}],
        },
        "devices": [
            {"allow": False, "access": "rwm"},
            {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
            {"allow": True, "type": "c", "major": 136, "access": "rw"},
        ],
    }
    if os.path.exists(p["memory"] + "/memory.memsw.limit_in_bytes"):
        resources["memory"]["swap"] = 128 * MiB
    # A weight needs an I/O scheduler that has one (bfq, or cfq on old kernels): without it, the
    # kernel offers no weight file and runc fails the write too, so only ask where it can be kept.
    weighted = any(os.path.exists(p["blkio"] + name) for name in ("/blkio.weight", "/blkio.bfq.weight"))
    if not weighted:
        del resources["blockIO"]["weight"]
    v1_group.set(resources)

    assert int(read(p["memory"] + "/memory.limit_in_bytes")) == 64 * MiB
    assert int(read(p["memory"] + "/memory.soft_limit_in_bytes")) == 32 * MiB
    assert read(p["memory"] + "/memory.swappiness") == "10"
    assert "oom_kill_disable 1" in read(p["memory"] + "/memory.oom_control")
    if "swap" in resources["memory"]:
        assert int(read(p["memory"] + "/memory.memsw.limit_in_bytes")) == 128 * MiB
    assert read(p["cpu"] + "/cpu.shares") == "512"
    assert read(p["cpu"] + "/cpu.cfs_quota_us") == "50000"
    assert read(p["cpu"] + "/cpu.cfs_period_us") == "100000"
    assert read(p["cpuset"] + "/cpuset.cpus") == "0"
    assert read(p["cpuset"] + "/cpuset.mems") == "0"
    assert read(p["pids"] + "/pids.max") == "50"
    if weighted:
        weight_file = "/blkio.weight" if os.path.exists(p["blkio"] + "/blkio.weight") else "/blkio.bfq.weight"
        assert read(p["blkio"] + weight_file).split()[-1] == "300"
    assert read(p["blkio"] + "/blkio.throttle.read_bps_device") == f"254:0 {10 * MiB}"
    assert read(p["blkio"] + "/blkio.throttle.write_iops_device") == "254:0 500"
    assert read(p["devices"] + "/devices.list").splitlines() == ["c 1:3 rwm", "c 136:* rw"]

    # Raising memory below memsw, then lowering: the write order must keep limit <= memsw.
    if "swap" in resources["memory"]:
        v1_group.set({"memory": {"limit": 256 * MiB, "swap": 512 * MiB}})
        assert int(read(p["memory"] + "/memory.limit_in_bytes")) == 256 * MiB
        v1_group.set({"memory": {"limit": 16 * MiB, "swap": 32 * MiB}})
        assert int(read(p["memory"] + "/memory.memsw.limit_in_bytes")) == 32 * MiB
    v1_group.set({"pids": {"limit": -1}, "cpu": {"quota": -1}})
    assert read(p["pids"] + "/pids.max") == "max"
    assert read(p["cpu"] + "/cpu.cfs_quota_us") == "-1"


def test_v1_empty_resources_write_nothing(v1_group: V1Cgroup) -> None:
    v1_group.create()
    p = v1_group.paths()
    before = read(p["memory"] + "/memory.limit_in_bytes")
    v1_group.set({})
    assert read(p["memory"] + "/memory.limit_in_bytes") == before
    assert read(p["devices"] + "/devices.list") == "a *:* rwm"


def test_v1_write_error_names_file_and_value(v1_group: V1Cgroup) -> None:
    v1_group.create()
    with pytest.raises(SyscallError) as info:
        v1_group.set({"cpu": {"cpus": "4096"}})
    message = str(info.value)
    assert "write 4096 to" in message
    assert v1_group.paths()["cpuset"] + "/cpuset.cpus" in message
    with pytest.raises(InvalidArgument):
        v1_group.set({"unified": {"memory.max": "1"}})


def test_v1_freeze_thaw(v1_group: V1Cgroup, child: subprocess.Popen[bytes]) -> None:
    v1_group.create()
    v1_group.add(child.pid)
    assert not v1_group.frozen()
    v1_group.freeze()
    assert v1_group.frozen()
    assert read(v1_group.paths()["freezer"] + "/freezer.state") == "FROZEN"
    # A frozen task sleeps uninterruptibly (D) whatever it was doing.
    assert state_of(child.pid) == "D"
    v1_group.thaw()
    assert not v1_group.frozen()
    assert wait_until(lambda: state_of(child.pid) in ("S", "R"))


def test_v1_stats(v1_group: V1Cgroup, child: subprocess.Popen[bytes]) -> None:
    v1_group.create()
    v1_group.add(child.pid)
    v1_group.set({"memory": {"limit": 64 * MiB}, "pids": {"limit": 20}})
    release(child)  # the busy loop now runs inside the cgroup
    assert wait_until(lambda: v1_group.stats()["cpu"]["usage"].get("total", 0) > 0)
    assert wait_until(lambda: v1_group.stats()["pids"].get("current") == 1)  # sh exec'ed sleep
    # Pages are charged as the new image faults them in, a moment after the exec.
    assert wait_until(lambda: v1_group.stats()["memory"]["usage"].get("usage", 0) > 0)
    # The busy loop over (sleep exec'ed): the total and the per-CPU counters are read one after
    # the other, and a loop still running between the two reads put 0.39 ms more in the second.
    assert wait_until(lambda: read(f"/proc/{child.pid}/comm").strip() == "sleep")
    stats = v1_group.stats()
    usage = stats["cpu"]["usage"]
    assert len(usage["percpu"]) == os.cpu_count()
    assert sum(usage["percpu"]) <= usage["total"] + 1000
    assert usage["kernel"] >= 0 and usage["user"] >= 0
    memory = stats["memory"]
    assert memory["usage"]["limit"] == 64 * MiB
    assert 0 < memory["usage"]["usage"] <= 64 * MiB
    assert memory["usage"]["max"] >= memory["usage"]["usage"]
    assert memory["usage"]["failcnt"] == 0
    assert isinstance(memory["raw"], dict) and "rss" in memory["raw"]
    assert stats["pids"] == {"current": 1, "limit": 20}
    assert stats["cpuset"]["cpus"] == list(range(os.cpu_count() or 1))
    assert isinstance(stats["blkio"], dict)
    assert v1_group.oom_kills() == 0


def test_v1_kill_all_and_destroy(v1_group: V1Cgroup, child: subprocess.Popen[bytes]) -> None:
    v1_group.create()
    v1_group.add(child.pid)
    v1_group.kill_all(signal.SIGKILL)
    assert child.wait(timeout=5) == -signal.SIGKILL
    assert wait_until(lambda: v1_group.pids() == [])
    assert not v1_group.frozen()  # kill_all thawed what it froze
    v1_group.destroy()
    for path in v1_group.paths().values():
        assert not os.path.exists(path), path
    v1_group.destroy()  # already gone: fine


def test_v1_destroy_busy_raises_typed(
    v1_group: V1Cgroup, child: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    v1_group.create()
    v1_group.add(child.pid)
    monkeypatch.setattr(cgroups, "SETTLE_SECONDS", 0.1)
    with pytest.raises(CgroupBusy) as info:
        v1_group.destroy()
    assert "rmdir" in str(info.value) and "busy" in str(info.value).lower()


def test_open_cgroup_paths_and_validation() -> None:
    needs_root()
    if cgroup_version() != 1:
        pytest.skip("host runs cgroup v2")
    group = open_cgroup(None, "skiff-t-abc")
    assert group.version == 1
    assert group.paths()["memory"] == v1_mounts()["memory"] + "/skiff-t-abc"
    assert open_cgroup("system.slice:skiff:xyz", "x").paths()["pids"].endswith("/pids/system.slice/skiff-xyz.scope")
    for bad in ("/a/../b", "../x", "/a//b", "/", "/a/./b", "x-.slice:p:n"):
        with pytest.raises(InvalidArgument):
            open_cgroup(bad, "x")
    with pytest.raises(InvalidArgument):
        open_cgroup(None, "../escape")


# --- v2 (the hybrid host's controller-less unified mount) -------------------------------------


def test_v2_lifecycle_on_unified_mount(v2_group: V2Cgroup, child: subprocess.Popen[bytes]) -> None:
    v2_group.create()
    v2_group.create()
    assert os.path.isdir(v2_group.path)
    assert v2_group.paths() == {"": v2_group.path}
    v2_group.add(child.pid)
    assert v2_group.pids() == [child.pid]
    assert f"0::{v2_group.path[len(UNIFIED) :]}" in read(f"/proc/{child.pid}/cgroup").splitlines()
    v2_group.set({})  # nothing given, nothing written

    if os.path.exists(v2_group.path + "/cgroup.freeze"):
        v2_group.freeze()
        assert v2_group.frozen()
        assert read(v2_group.path + "/cgroup.freeze") == "1"
        v2_group.thaw()
        assert not v2_group.frozen()

    # No controllers here: a requested limit fails, naming the file and value.
    with pytest.raises(SyscallError) as info:
        v2_group.set({"pids": {"limit": 10}})
    assert f"write 10 to `{v2_group.path}/pids.max`" in str(info.value)

    stats = v2_group.stats()
    assert stats["memory"] == {} and stats["pids"] == {}
    assert "usage" in stats["cpu"]

    v2_group.kill_all(signal.SIGKILL)
    assert child.wait(timeout=5) == -signal.SIGKILL
    assert wait_until(lambda: v2_group.pids() == [])
    v2_group.destroy()
    assert not os.path.exists(v2_group.path)


def test_v2_kill_all_term_goes_through_freezer(v2_group: V2Cgroup, child: subprocess.Popen[bytes]) -> None:
    v2_group.create()
    v2_group.add(child.pid)
    v2_group.kill_all(signal.SIGTERM)
    assert child.wait(timeout=5) == -signal.SIGTERM
    assert wait_until(lambda: v2_group.pids() == [])
    if os.path.exists(v2_group.path + "/cgroup.freeze"):
        assert not v2_group.frozen()
