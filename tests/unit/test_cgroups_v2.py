"""cgroup conversions and file writes that need no root: v2 against a fake folder, paths, mountinfo.

The v2 cgroup writes with plain open(2) on existing files, so a temporary folder with the files
pre-made stands in for a delegated cgroup2 folder and shows exactly what would be written.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.errors import InvalidArgument, SyscallError
from services.lowlevel.cgroups import cgroup_relpath
from services.lowlevel.cgroups.files import device_rule, parse_id_list
from services.lowlevel.cgroups.v1 import v1_mounts
from services.lowlevel.cgroups.v2 import V2Cgroup, cpu_max, cpu_weight, io_weight, swap_max

MiB = 1024 * 1024

V2_FILES = (
    "cgroup.procs",
    "memory.max",
    "memory.low",
    "memory.swap.max",
    "cpu.weight",
    "cpu.max",
    "cpuset.cpus",
    "cpuset.mems",
    "pids.max",
    "io.weight",
    "io.max",
    "memory.high",
)


@pytest.fixture
def fake_v2(tmp_path: Path) -> V2Cgroup:
    leaf = tmp_path / "skiff" / "c"
    leaf.mkdir(parents=True)
    for name in V2_FILES:
        (leaf / name).write_text("")
    return V2Cgroup(str(leaf), root=str(tmp_path))


def written(group: V2Cgroup, name: str) -> str:
    return (Path(group.path) / name).read_text()


def reset(group: V2Cgroup) -> None:
    """Empty the fake files: a kernel file takes each write whole, a regular file does not."""
    for name in V2_FILES:
        (Path(group.path) / name).write_text("")


def test_cpu_weight_matches_runc() -> None:
    assert cpu_weight(0) == 0  # unset stays unset
    assert cpu_weight(2) == 1
    assert cpu_weight(1024) == 39  # v1's default maps near v2's 100 only with the newer formula
    assert cpu_weight(262144) == 10000


def test_cpu_max() -> None:
    assert cpu_max(0, 0) is None
    assert cpu_max(50000, 100000) == "50000 100000"
    assert cpu_max(-1, 100000) == "max 100000"
    assert cpu_max(20000, 0) == "20000"
    assert cpu_max(0, 250000) == "max 250000"


def test_io_weight() -> None:
    assert io_weight(0) == 0
    assert io_weight(10) == 1
    assert io_weight(500) == 1 + (490 * 9999) // 990
    assert io_weight(1000) == 10000


def test_swap_max_is_swap_without_memory() -> None:
    assert swap_max(0, 0) == 0
    assert swap_max(0, -1) == -1  # unlimited memory, swap unset: unlimited swap too
    assert swap_max(-1, 64 * MiB) == -1
    assert swap_max(128 * MiB, 64 * MiB) == 64 * MiB
    assert swap_max(64 * MiB, 64 * MiB) == 0
    with pytest.raises(InvalidArgument):
        swap_max(128 * MiB, 0)  # a swap limit needs a memory limit
    with pytest.raises(InvalidArgument):
        swap_max(32 * MiB, 64 * MiB)  # memory+swap below memory


def test_v2_set_writes_converted_values(fake_v2: V2Cgroup) -> None:
    fake_v2.set(
        {
            "memory": {"limit": 64 * MiB, "swap": 96 * MiB, "reservation": 16 * MiB, "swappiness": 5},
            "cpu": {"shares": 1024, "quota": 50000, "period": 100000, "cpus": "0-1", "mems": "0"},
            "pids": {"limit": 42},
            "blockIO": {"weight": 500, "throttleWriteBpsDevice": [{"major": 8, "minor": 0, "rate": 1000}]},
            "devices": [{"allow": False, "access": "rwm"}],  # needs eBPF: skipped, not an error
            "unified": {"memory.high": "max"},
        }
    )
    assert written(fake_v2, "memory.max") == str(64 * MiB)
    assert written(fake_v2, "memory.swap.max") == str(32 * MiB)
    assert written(fake_v2, "memory.low") == str(16 * MiB)
    assert written(fake_v2, "cpu.weight") == "39"
    assert written(fake_v2, "cpu.max") == "50000 100000"
    assert written(fake_v2, "cpuset.cpus") == "0-1"
    assert written(fake_v2, "cpuset.mems") == "0"
    assert written(fake_v2, "pids.max") == "42"
    assert written(fake_v2, "io.weight") == f"default {io_weight(500)}"
    assert written(fake_v2, "io.max") == "8:0 wbps=1000"
    assert written(fake_v2, "memory.high") == "max"


def test_v2_set_limits_unlimited_and_no_swap(fake_v2: V2Cgroup) -> None:
    fake_v2.set({"memory": {"limit": -1}, "pids": {"limit": -1}})
    assert written(fake_v2, "memory.max") == "max"
    assert written(fake_v2, "memory.swap.max") == "max"
    assert written(fake_v2, "pids.max") == "max"
    reset(fake_v2)
    fake_v2.set({"memory": {"limit": 8 * MiB, "swap": 8 * MiB}})
    assert written(fake_v2, "memory.swap.max") == "0"  # memory == memory+swap: no swap


def test_v2_empty_resources_write_nothing(fake_v2: V2Cgroup) -> None:
    fake_v2.set({})
    assert all(written(fake_v2, name) == "" for name in V2_FILES)


def test_v2_unified_key_validated(fake_v2: V2Cgroup) -> None:
    for bad in ("../memory.max", "memory", ".hidden"):
        with pytest.raises(InvalidArgument):
            fake_v2.set({"unified": {bad: "1"}})


def test_v2_write_error_names_file_and_value(fake_v2: V2Cgroup) -> None:
    with pytest.raises(SyscallError) as info:
        fake_v2.set({"cpu": {"idle": 1}})  # no cpu.idle in the fake folder
    assert str(info.value) == f"write 1 to `{fake_v2.path}/cpu.idle`: No such file or directory"


def test_v2_create_delegates_controllers(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids\n")
    (tmp_path / "cgroup.subtree_control").write_text("")
    group = V2Cgroup(str(tmp_path / "a" / "b"), root=str(tmp_path))
    group.create()
    assert (tmp_path / "a" / "b").is_dir()
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    assert group.paths() == {"": str(tmp_path / "a" / "b")}
    group.destroy()
    assert not (tmp_path / "a" / "b").exists()
    group.destroy()  # missing is fine


def test_v2_stats_shape(fake_v2: V2Cgroup) -> None:
    leaf = Path(fake_v2.path)
    (leaf / "cpu.stat").write_text(
        "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 4\nnr_throttled 1\nthrottled_usec 20\n"
    )
    (leaf / "memory.current").write_text("4096\n")
    (leaf / "memory.max").write_text("8192\n")
    (leaf / "memory.swap.current").write_text("0\n")
    (leaf / "memory.swap.max").write_text("max\n")
    (leaf / "memory.stat").write_text("anon 4096\nfile 0\n")
    (leaf / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    (leaf / "pids.current").write_text("2\n")
    (leaf / "pids.max").write_text("max\n")
    (leaf / "io.stat").write_text("8:0 rbytes=100 wbytes=0 rios=2 wios=0 dbytes=0 dios=0\n")
    stats = fake_v2.stats()
    assert stats["cpu"] == {
        "usage": {"total": 1_500_000, "kernel": 500_000, "user": 1_000_000},
        "throttling": {"periods": 4, "throttledPeriods": 1, "throttledTime": 20_000},
    }
    assert stats["memory"]["usage"] == {"limit": 8192, "usage": 4096, "failcnt": 3}
    assert stats["memory"]["swap"]["limit"] == 2**64 - 1
    assert stats["memory"]["swap"]["usage"] == 4096  # v1-style memory+swap
    assert stats["memory"]["raw"] == {"anon": 4096, "file": 0}
    assert stats["pids"] == {"current": 2}  # "max" is no limit: omitted like runc's omitempty
    assert stats["blkio"]["ioServiceBytesRecursive"] == [
        {"major": 8, "op": "Read", "value": 100},
        {"major": 8, "op": "Write"},
    ]
    assert fake_v2.oom_kills() == 1


def test_relpath_forms() -> None:
    assert cgroup_relpath(None, "abc") == "/abc"
    assert cgroup_relpath("", "abc") == "/abc"
    assert cgroup_relpath("/skiff/abc", "x") == "/skiff/abc"
    assert cgroup_relpath("skiff/abc", "x") == "/skiff/abc"  # relative treated as absolute
    assert cgroup_relpath("system.slice:docker:abc", "x") == "/system.slice/docker-abc.scope"
    assert cgroup_relpath("a-b.slice:p:n", "x") == "/a.slice/a-b.slice/p-n.scope"
    assert cgroup_relpath(":skiff:abc", "x") == "/system.slice/skiff-abc.scope"
    assert cgroup_relpath("-.slice::abc", "x") == "/abc.scope"


@pytest.mark.parametrize(
    "bad", ["/", "/a/../b", "..", "/a//b", "/a/./b", "/a/", "bad:p:n", "a--b.slice:p:n", "s.slice:p:", "/a\0b"]
)
def test_relpath_rejects(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        cgroup_relpath(bad, "x")


def test_device_rule_text() -> None:
    assert device_rule({"allow": False, "access": "rwm"}) == "a *:* rwm"
    assert device_rule({"type": "c", "major": 1, "minor": 3, "access": "rw"}) == "c 1:3 rw"
    assert device_rule({"type": "b", "major": 8, "minor": -1}) == "b 8:* rwm"
    with pytest.raises(InvalidArgument):
        device_rule({"type": "x"})
    # As runc: only r, w and m reach the kernel ("rwa" is "rw"); a rule with none of them is dropped.
    assert device_rule({"type": "c", "major": 1, "minor": 11, "access": "rwa"}) == "c 1:11 rw"
    assert device_rule({"type": "c", "access": "x"}) is None


def test_parse_id_list() -> None:
    assert parse_id_list("0-3,5\n") == [0, 1, 2, 3, 5]
    assert parse_id_list("\n") == []


def test_v1_mounts_from_mountinfo(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(
        "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
        "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
        "35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
        "40 31 0:37 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd\n"
        "41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"
        "42 31 0:39 / /sys/fs/cgroup/misc rw - cgroup cgroup rw,misc\n"
    )
    assert v1_mounts(str(info)) == {
        "cpu": "/sys/fs/cgroup/cpu,cpuacct",
        "cpuacct": "/sys/fs/cgroup/cpu,cpuacct",
        "memory": "/sys/fs/cgroup/memory",
        "name=systemd": "/sys/fs/cgroup/systemd",
        "": "/sys/fs/cgroup/unified",  # a hybrid host's cgroup2 hierarchy, joined as runc does
    }
