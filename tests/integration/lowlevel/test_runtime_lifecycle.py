"""Lifecycle through the CLI: create/start/state/kill/delete, run, ps, list, pause/resume, update, spec, features."""

from __future__ import annotations

import json
from pathlib import Path

from tests.integration.lowlevel.conftest import Runtime, cgroup_dirs, cgroup_file, pid_alive, wait_until


def test_state_moves_created_running_stopped(rt: Runtime) -> None:
    cid, bundle, _ = rt.bundle(["sh", "-c", "read x < /dev/null; sleep 0.3"])
    rt.create(cid, bundle, out=bundle.parent / "out").ok()
    st = rt.state(cid)
    assert st["status"] == "created"
    assert st["id"] == cid
    assert st["bundle"] == str(bundle)
    assert pid_alive(st["pid"])
    rt.cmd("start", cid).ok()
    assert rt.status(cid) in ("running", "stopped")
    rt.wait_status(cid, "stopped")
    rt.cmd("delete", cid).ok()
    rt.assert_nothing_left(cid, bundle)
    r = rt.cmd("state", cid)
    assert r.returncode != 0
    assert "not exist" in r.stderr or "not found" in r.stderr.lower()


def test_running_then_killed(rt: Runtime) -> None:
    cid, bundle, _ = rt.start_container(["sleep", "60"])
    rt.wait_status(cid, "running")
    pid = rt.state(cid)["pid"]
    rt.cmd("kill", cid, "KILL").ok()
    rt.wait_status(cid, "stopped")
    assert not pid_alive(pid)
    rt.cmd("delete", cid).ok()
    rt.assert_nothing_left(cid, bundle)


def test_run_foreground_returns_exit_code(rt: Runtime) -> None:
    cid, bundle, _ = rt.bundle(["sh", "-c", "echo out-line; echo err-line >&2; exit 42"])
    r = rt.cmd("run", "--bundle", str(bundle), cid)
    assert r.returncode == 42, r
    assert "out-line" in r.stdout
    assert "err-line" in r.stderr
    rt.assert_nothing_left(cid, bundle)


def test_run_detach(rt: Runtime) -> None:
    cid, bundle, _ = rt.bundle(["sleep", "60"])
    with open(bundle.parent / "out", "wb") as out:
        import subprocess

        done = subprocess.run(
            [*rt.argv, "--root", str(rt.root), "run", "--detach", "--bundle", str(bundle), cid],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            timeout=30,
            check=False,
        )
    assert done.returncode == 0, (bundle.parent / "out").read_text()
    assert rt.status(cid) == "running"
    rt.cmd("delete", "--force", cid).ok()
    rt.assert_nothing_left(cid, bundle)


def test_pid_file(rt: Runtime) -> None:
    cid, bundle, _ = rt.bundle(["sleep", "60"])
    pid_file = rt.prefix / "init.pid"
    rt.create(cid, bundle, "--pid-file", str(pid_file), out=bundle.parent / "out").ok()
    assert int(pid_file.read_text()) == rt.state(cid)["pid"]


def test_ps_and_list_json(rt: Runtime) -> None:
    cid, _, _ = rt.start_container(["sh", "-c", "sleep 60 & sleep 60"])
    init = rt.state(cid)["pid"]
    pids = wait_until(
        lambda: (p := json.loads(rt.cmd("ps", "--format", "json", cid).ok().stdout)) and len(p) >= 2 and p
    )
    assert init in pids and len(pids) >= 2, pids
    listed = json.loads(rt.cmd("list", "--format", "json").ok().stdout)
    mine = [e for e in listed if e["id"] == cid]
    assert len(mine) == 1
    assert mine[0]["status"] == "running"
    assert mine[0]["pid"] == init
    quiet = rt.cmd("list", "-q").ok().stdout.split()
    assert cid in quiet


def test_pause_resume(rt: Runtime) -> None:
    cid, _, _ = rt.start_container(["sleep", "60"])
    rt.cmd("pause", cid).ok()
    assert rt.status(cid) == "paused"
    path = rt.state(cid)
    assert path["status"] == "paused"
    rt.cmd("resume", cid).ok()
    assert rt.status(cid) == "running"


def test_update_pids_limit_from_file(rt: Runtime) -> None:
    cid, _, spec = rt.start_container(
        ["sleep", "60"], edit=lambda s: s["linux"]["resources"].update(pids={"limit": 50})
    )
    cg = spec["linux"]["cgroupsPath"]
    assert cgroup_file("pids", cg, "pids.max") == "50"
    res = rt.prefix / "resources.json"
    res.write_text(json.dumps({"pids": {"limit": 77}}))
    rt.cmd("update", "-r", str(res), cid).ok()
    assert cgroup_file("pids", cg, "pids.max") == "77"
    rt.cmd("update", "--resources", "-", cid, input=json.dumps({"pids": {"limit": 78}}).encode()).ok()
    assert cgroup_file("pids", cg, "pids.max") == "78"


def test_kill_all(rt: Runtime) -> None:
    cid, bundle, spec = rt.start_container(["sh", "-c", "sleep 60 & sleep 60 & sleep 60"])
    cg = spec["linux"]["cgroupsPath"]
    pids = wait_until(
        lambda: (p := json.loads(rt.cmd("ps", "--format", "json", cid).ok().stdout)) and len(p) >= 3 and p
    )
    assert len(pids) >= 3, pids
    rt.cmd("kill", "--all", cid, "KILL").ok()
    rt.wait_status(cid, "stopped")
    assert wait_until(lambda: not any(pid_alive(p) for p in pids)), [p for p in pids if pid_alive(p)]
    rt.cmd("delete", cid).ok()
    assert not cgroup_dirs(cg)
    rt.assert_nothing_left(cid, bundle)


def test_spec_writes_default_and_refuses_to_overwrite(rt: Runtime, tmp_path: Path) -> None:
    rt.cmd("spec", cwd=tmp_path).ok()
    spec = json.loads((tmp_path / "config.json").read_text())
    assert spec["ociVersion"].startswith("1.")
    assert spec["process"]["args"] == ["sh"]
    assert spec["root"] == {"path": "rootfs", "readonly": True}
    assert {ns["type"] for ns in spec["linux"]["namespaces"]} == {"pid", "network", "ipc", "uts", "mount"}
    before = (tmp_path / "config.json").read_text()
    r = rt.cmd("spec", cwd=tmp_path)
    assert r.returncode != 0
    assert "exists" in r.stderr
    assert (tmp_path / "config.json").read_text() == before
    other = tmp_path / "b"
    other.mkdir()
    rt.cmd("spec", "--bundle", str(other)).ok()
    assert json.loads((other / "config.json").read_text()) == spec


def test_features_json(rt: Runtime) -> None:
    feats = json.loads(rt.cmd("features").ok().stdout)
    assert feats["ociVersionMin"].startswith("1.0")
    assert "createRuntime" in feats["hooks"] and "poststop" in feats["hooks"]
    assert "rbind" in feats["mountOptions"]
    linux = feats["linux"]
    assert {"pid", "mount", "user", "cgroup"} <= set(linux["namespaces"])
    assert "CAP_SYS_ADMIN" in linux["capabilities"]
    assert linux["seccomp"]["enabled"] is True
    assert "SCMP_ACT_ERRNO" in linux["seccomp"]["actions"]
