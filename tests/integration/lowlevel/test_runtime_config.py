"""config.json fields the other suites leave out: rlimits, oomScoreAdj, sysctl, devices, blkio,
bind mounts with flags, joining a namespace by path, and the MS_MOVE path (--no-pivot). The same
tests pass with runc (SKIFF_TEST_RUNTIME=runc)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.integration.lowlevel.conftest import Runtime, cgroup_file, wait_until


def run(rt: Runtime, script: str, edit: Any = None, *extra: str) -> str:
    cid, bundle, _ = rt.bundle(["sh", "-c", script], edit=edit)
    r = rt.cmd("run", "--bundle", str(bundle), *extra, cid)
    assert r.returncode == 0, r
    rt.assert_nothing_left(cid, bundle)
    return r.stdout


def test_rlimits_and_oom_score_adj(rt: Runtime) -> None:
    def edit(spec: dict[str, Any]) -> None:
        spec["process"]["rlimits"] = [
            {"type": "RLIMIT_NOFILE", "soft": 321, "hard": 654},
            {"type": "RLIMIT_NPROC", "soft": 77, "hard": 88},
        ]
        spec["process"]["oomScoreAdj"] = 345

    out = run(rt, "echo nofile=$(ulimit -n) hard=$(ulimit -Hn) nproc=$(ulimit -u); "
                  "echo oom=$(cat /proc/self/oom_score_adj)", edit)
    assert "nofile=321 hard=654 nproc=77" in out, out
    assert "oom=345" in out, out


def test_sysctl_in_own_namespaces(rt: Runtime) -> None:
    def edit(spec: dict[str, Any]) -> None:
        spec["linux"]["sysctl"] = {"net.ipv4.ip_forward": "1", "kernel.msgmax": "12345"}
        # /proc/sys stays in readonlyPaths: the sysctls are written before it turns read-only.
        assert "/proc/sys" in spec["linux"]["readonlyPaths"]

    host_msgmax = Path("/proc/sys/kernel/msgmax").read_text().strip()
    out = run(rt, "echo fwd=$(cat /proc/sys/net/ipv4/ip_forward) msgmax=$(cat /proc/sys/kernel/msgmax)", edit)
    assert "fwd=1 msgmax=12345" in out, out
    # Set in the container's network and IPC namespaces: the host keeps its values.
    assert Path("/proc/sys/kernel/msgmax").read_text().strip() == host_msgmax


def test_devices_and_device_cgroup(rt: Runtime) -> None:
    def edit(spec: dict[str, Any]) -> None:
        spec["linux"]["devices"] = [
            {"path": "/dev/skiffnull", "type": "c", "major": 1, "minor": 3, "fileMode": 0o620, "uid": 0, "gid": 0}
        ]

    out = run(rt, "ls -l /dev/skiffnull; echo hi > /dev/skiffnull && echo write=ok; "
                  "head -c 4 /dev/urandom | wc -c", edit)
    assert "crw--w----" in out and "1,   3" in out, out
    assert "write=ok" in out
    assert out.strip().endswith("4")


def test_device_not_allowed_by_cgroup(rt: Runtime) -> None:
    def edit(spec: dict[str, Any]) -> None:
        # /dev/kmsg (1:11) exists as a node but the device cgroup (deny all by default) refuses it.
        spec["linux"]["devices"] = []
        spec["mounts"].append({"destination": "/dev/kmsg", "type": "bind", "source": "/dev/kmsg",
                               "options": ["bind", "ro"]})

    out = run(rt, "cat /dev/kmsg >/dev/null 2>&1 && echo read=ok || echo read=denied", edit)
    assert "read=denied" in out, out


def test_blkio_weight_in_cgroup(rt: Runtime) -> None:
    root = Path("/sys/fs/cgroup/blkio")
    if not any((root / n).exists() for n in ("blkio.bfq.weight", "blkio.weight")):
        # No I/O scheduler with weights on this kernel (none/mq-deadline): runc refuses it too.
        pytest.skip("this kernel's block I/O scheduler offers no blkio weight file")
    def edit(spec: dict[str, Any]) -> None:
        spec["linux"]["resources"]["blockIO"] = {"weight": 321}

    cid, bundle, spec = rt.start_container(["sleep", "30"], edit=edit)
    folder = Path("/sys/fs/cgroup/blkio") / spec["linux"]["cgroupsPath"].lstrip("/")
    names = [n for n in ("blkio.bfq.weight", "blkio.weight") if (folder / n).exists()]
    assert names, f"no blkio weight file in {folder}"
    value = cgroup_file("blkio", spec["linux"]["cgroupsPath"], names[0])
    assert "321" in value, value
    rt.cmd("delete", "--force", cid).ok()
    rt.assert_nothing_left(cid, bundle)


def test_bind_mount_readonly_and_noexec(rt: Runtime) -> None:
    shared = rt.prefix / "shared"
    shared.mkdir()
    (shared / "data").write_text("from the host\n")
    os.link("/bin/busybox", shared / "bb")

    def edit(spec: dict[str, Any]) -> None:
        spec["mounts"].append({"destination": "/mnt/host", "type": "bind", "source": str(shared),
                               "options": ["rbind", "ro", "noexec", "nosuid"]})

    out = run(rt, "cat /mnt/host/data; touch /mnt/host/new 2>/dev/null && echo write=ok || echo write=denied; "
                  "/mnt/host/bb true 2>/dev/null && echo exec=ok || echo exec=denied", edit)
    assert "from the host" in out
    assert "write=denied" in out and "exec=denied" in out, out
    assert not (shared / "new").exists()


def test_join_network_namespace_by_path(rt: Runtime) -> None:
    # A namespace the test makes and keeps open with a sleeping process: the container joins it.
    holder = subprocess.Popen(["unshare", "--net", "/bin/busybox", "sleep", "60"])
    try:
        ns_path = f"/proc/{holder.pid}/ns/net"
        assert wait_until(lambda: os.readlink(ns_path) != os.readlink("/proc/self/ns/net"), 10)
        subprocess.run(["nsenter", f"--net={ns_path}", "ip", "link", "add", "skiffv0", "type", "veth", "peer",
                        "name", "skiffv1"], check=True, timeout=10)

        def edit(spec: dict[str, Any]) -> None:
            spec["linux"]["namespaces"] = [
                ns if ns["type"] != "network" else {"type": "network", "path": ns_path}
                for ns in spec["linux"]["namespaces"]
            ]

        out = run(rt, "ls /sys/class/net", edit)
        assert {"skiffv0", "skiffv1"} <= set(out.split()), out
    finally:
        holder.kill()
        holder.wait(timeout=10)


def test_no_pivot_moves_the_root(rt: Runtime) -> None:
    out = run(rt, "echo pid=$$; ls /; cat /proc/self/mountinfo | wc -l", None, "--no-pivot")
    assert "pid=1" in out
    assert "bin" in out.split()
