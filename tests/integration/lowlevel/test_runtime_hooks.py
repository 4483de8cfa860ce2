"""OCI hooks through config.json: every phase called, in order, each seeing the state on stdin."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.integration.lowlevel.conftest import Runtime, wait_until

# Appends "<phase> <status read from stdin> <pid seen>" to the file named in $1.
HOOK = (
    "s=$(/bin/busybox cat); "
    'st=$(echo "$s" | /bin/busybox sed -n \'s/.*"status": *"\\([a-z]*\\)".*/\\1/p\'); '
    'pid=$(echo "$s" | /bin/busybox sed -n \'s/.*"pid": *\\([0-9]*\\).*/\\1/p\'); '
    'echo "$0 $st $pid" >> "$1"'
)
PHASES = ("createRuntime", "createContainer", "startContainer", "poststart", "poststop")


def hook(phase: str, log: str) -> dict[str, Any]:
    return {"path": "/bin/busybox", "args": ["sh", "-c", HOOK, phase, log]}


def without_early_poststart(rt: Runtime, lines: list[str]) -> list[str]:
    """runc 1.1 runs poststart hooks during ``create`` (fixed in runc 1.2): the spec, and
    skiff-lowlevel, run them after ``start``. For runc the poststart line is checked and dropped."""
    if not rt.is_runc:
        return lines
    early = [line for line in lines if line.startswith("poststart ")]
    assert len(early) <= 1, lines
    return [line for line in lines if not line.startswith("poststart ")]


def test_every_hook_in_order_with_state_on_stdin(rt: Runtime) -> None:
    logs = rt.prefix / "hooklog"
    logs.mkdir()
    logs.chmod(0o777)
    host_log = str(logs / "log")

    def edit(spec: dict[str, Any]) -> None:
        # startContainer runs inside the container, after pivot_root: it writes through a bind mount.
        spec["mounts"].append({"destination": "/hooklog", "type": "bind", "source": str(logs), "options": ["rbind"]})
        spec["hooks"] = {
            phase: [hook(phase, "/hooklog/log" if phase == "startContainer" else host_log)] for phase in PHASES
        }

    cid, bundle, _ = rt.bundle(["sh", "-c", "echo main >> /hooklog/log; sleep 60"], edit=edit)
    rt.create(cid, bundle, out=bundle.parent / "out").ok()
    pid = rt.state(cid)["pid"]
    lines = without_early_poststart(rt, Path(host_log).read_text().splitlines())
    assert [line.split()[0] for line in lines] == ["createRuntime", "createContainer"], lines
    # During create, the state the hooks read says "creating" and carries the init's pid.
    assert lines[0].split()[1:] == ["creating", str(pid)], lines
    assert lines[1].split()[1] == "creating", lines
    assert rt.status(cid) == "created"
    rt.cmd("start", cid).ok()
    wait_until(lambda: "main" in Path(host_log).read_text())
    rt.cmd("kill", cid, "KILL").ok()
    rt.wait_status(cid, "stopped")
    rt.cmd("delete", cid).ok()
    lines = without_early_poststart(rt, Path(host_log).read_text().splitlines())
    order = [line.split()[0] for line in lines]
    # poststart runs in the runtime after the process started: it may come before or after "main".
    assert order[:3] == ["createRuntime", "createContainer", "startContainer"], lines
    assert sorted(order[3:-1]) == (["main"] if rt.is_runc else ["main", "poststart"]), lines
    assert order[-1] == "poststop", lines
    statuses = {line.split()[0]: line.split()[1] for line in lines if len(line.split()) > 1}
    assert statuses["startContainer"] == "created"
    if not rt.is_runc:
        assert statuses["poststart"] == "running"
    assert statuses["poststop"] == "stopped"
    rt.assert_nothing_left(cid, bundle)


def test_failing_create_runtime_hook_fails_create_and_leaves_nothing(rt: Runtime) -> None:
    def edit(spec: dict[str, Any]) -> None:
        spec["hooks"] = {
            "createRuntime": [{"path": "/bin/busybox", "args": ["sh", "-c", "echo hook-broke >&2; exit 3"]}]
        }

    cid, bundle, _ = rt.bundle(["true"], edit=edit)
    r = rt.create(cid, bundle, out=bundle.parent / "out")
    assert r.returncode != 0
    assert "createRuntime" in r.stderr or "hook" in r.stderr.lower(), r
    rt.assert_nothing_left(cid, bundle)
