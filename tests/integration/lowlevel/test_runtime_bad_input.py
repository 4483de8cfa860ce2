"""Bad input: each a clear message on stderr, a non-zero exit, and nothing left behind (no state
folder, cgroup, mount or process)."""

from __future__ import annotations

import json
import shutil
from typing import Any

from tests.integration.lowlevel.conftest import Runtime, pid_alive


def failed_create(rt: Runtime, cid: str, bundle: Any, *phrases: str) -> str:
    r = rt.create(cid, bundle, out=bundle.parent / f"{cid}.out")
    assert r.returncode != 0, r
    assert r.stderr.strip(), r
    for phrase in phrases:
        assert phrase.lower() in r.stderr.lower(), r
    rt.assert_nothing_left(cid, bundle)
    assert rt.cmd("state", cid).returncode != 0
    return r.stderr


def test_missing_config_json(rt: Runtime) -> None:
    cid, bundle, _ = rt.bundle(["true"])
    (bundle / "config.json").unlink()
    failed_create(rt, cid, bundle, "config.json")


def test_malformed_config_json(rt: Runtime) -> None:
    cid, bundle, _ = rt.bundle(["true"])
    (bundle / "config.json").write_text('{"ociVersion": "1.0.2", "process": {')
    failed_create(rt, cid, bundle)


def test_unknown_namespace_type(rt: Runtime) -> None:
    cid, bundle, _ = rt.bundle(["true"], edit=lambda s: s["linux"]["namespaces"].append({"type": "bogusns"}))
    failed_create(rt, cid, bundle, "bogusns")


def test_missing_rootfs(rt: Runtime) -> None:
    cid, bundle, _ = rt.bundle(["true"])
    shutil.rmtree(bundle / "rootfs")
    failed_create(rt, cid, bundle, "rootfs")


def test_missing_executable(rt: Runtime) -> None:
    cid, bundle, _ = rt.bundle(["/no/such/program"])
    r = rt.create(cid, bundle, out=bundle.parent / "out")
    if r.returncode == 0:  # runc 1.1 finds out only at start
        s = rt.cmd("start", cid)
        assert s.returncode != 0, s
        assert "no such file" in s.stderr.lower(), s
        rt.cmd("delete", "--force", cid).ok()
    else:
        assert "no such file" in r.stderr.lower(), r
    rt.assert_nothing_left(cid, bundle)


def test_id_that_exists_leaves_the_existing_one_untouched(rt: Runtime) -> None:
    cid, bundle, spec = rt.bundle(["sleep", "60"])
    rt.create(cid, bundle, out=bundle.parent / "out").ok()
    before = rt.state(cid)
    other = rt.prefix / "other"
    shutil.copytree(bundle, other, symlinks=True)
    r = rt.create(cid, other, out=rt.prefix / "other.out")
    assert r.returncode != 0, r
    assert "exist" in r.stderr.lower(), r
    after = rt.state(cid)
    assert after == before
    assert after["status"] == "created" and pid_alive(after["pid"])
    rt.cmd("start", cid).ok()
    assert rt.status(cid) == "running"
    rt.cmd("delete", "--force", cid).ok()
    rt.assert_nothing_left(cid, bundle)


def test_kill_of_stopped_container(rt: Runtime) -> None:
    cid, bundle, _ = rt.bundle(["true"])
    rt.create(cid, bundle, out=bundle.parent / "out").ok()
    rt.cmd("start", cid).ok()
    rt.wait_status(cid, "stopped")
    r = rt.cmd("kill", cid, "TERM")
    assert r.returncode != 0, r
    assert "not running" in r.stderr, r
    assert rt.status(cid) == "stopped"
    rt.cmd("delete", cid).ok()
    rt.assert_nothing_left(cid, bundle)


def test_delete_of_running_container_needs_force(rt: Runtime) -> None:
    cid, bundle, _ = rt.start_container(["sleep", "60"])
    pid = rt.state(cid)["pid"]
    r = rt.cmd("delete", cid)
    assert r.returncode != 0, r
    assert "running" in r.stderr and "stopped" in r.stderr, r
    assert rt.status(cid) == "running" and pid_alive(pid)
    rt.cmd("delete", "--force", cid).ok()
    assert not pid_alive(pid)
    rt.assert_nothing_left(cid, bundle)


def test_unknown_container(rt: Runtime) -> None:
    for argv in (["state"], ["start"], ["kill"], ["delete"], ["pause"], ["exec"]):
        r = rt.cmd(*argv, "skiff-t-no-such-container", *(["true"] if argv == ["exec"] else []))
        assert r.returncode != 0, r
        assert "does not exist" in r.stderr or "not exist" in r.stderr, r
    # delete --force of an unknown id is not an error (as runc).
    rt.cmd("delete", "--force", "skiff-t-no-such-container").ok()


def test_create_error_goes_to_json_log(rt: Runtime) -> None:
    """A shim passes --log FILE --log-format json and reads the reason from there."""
    cid, bundle, _ = rt.bundle(["true"])
    shutil.rmtree(bundle / "rootfs")
    log = rt.prefix / "runtime.log"
    r = rt.cmd("--log", str(log), "--log-format", "json", "create", "--bundle", str(bundle), cid)
    assert r.returncode != 0
    entries = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    errors = [e for e in entries if e.get("level") == "error"]
    assert errors, log.read_text()
    assert "rootfs" in errors[-1]["msg"], errors
    assert "time" in errors[-1]
    rt.assert_nothing_left(cid, bundle)


def test_bad_command_line(rt: Runtime) -> None:
    r = rt.cmd("no-such-command")
    assert r.returncode != 0 and r.stderr.strip()
    r = rt.cmd("create", "--no-such-flag", "x")
    assert r.returncode != 0 and "no-such-flag" in r.stderr
    r = rt.cmd("create")
    assert r.returncode != 0 and r.stderr.strip()
