"""What a container sees from inside: PID 1, hostname, no host processes, masked and read-only
paths, its uid/gid, and a user namespace's mapping. Each runs in the foreground through ``run``."""

from __future__ import annotations

import os
from typing import Any

from tests.integration.lowlevel.conftest import Runtime


def run(rt: Runtime, script: str, edit: Any = None) -> str:
    cid, bundle, _ = rt.bundle(["sh", "-c", script], edit=edit)
    r = rt.cmd("run", "--bundle", str(bundle), cid)
    assert r.returncode == 0, r
    rt.assert_nothing_left(cid, bundle)
    return r.stdout


def test_pid1_hostname_and_no_host_processes(rt: Runtime) -> None:
    def edit(spec: dict[str, Any]) -> None:
        spec["hostname"] = "skiff-box"

    out = run(rt, "echo pid=$$; echo host=$(hostname); echo procs=$(ls /proc | grep '^[0-9]' | tr '\\n' ' ')", edit)
    lines = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    assert lines["pid"] == "1"
    assert lines["host"] == "skiff-box"
    procs = {int(p) for p in lines["procs"].split()}
    # Only the shell and its ls/grep/tr children: nothing of the host, not even this test's pid.
    assert 1 in procs and len(procs) <= 6, procs
    assert os.getpid() not in procs or os.getpid() < 10


def test_masked_paths(rt: Runtime) -> None:
    out = run(
        rt,
        "echo kcore=$(cat /proc/kcore | wc -c); echo firmware=$(ls -A /sys/firmware | wc -l); "
        "echo keys=$(cat /proc/keys | wc -c)",
    )
    values = dict(line.split("=", 1) for line in out.splitlines())
    assert values == {"kcore": "0", "firmware": "0", "keys": "0"}, out


def test_readonly_paths_and_root(rt: Runtime) -> None:
    out = run(
        rt,
        "echo x > /proc/sys/kernel/domainname 2>/dev/null && echo procsys=rw || echo procsys=ro; "
        "touch /newfile 2>/dev/null && echo root=rw || echo root=ro; "
        "touch /tmp/f && echo tmp=rw; "
        "grep -q ' /proc/sys ro,' /proc/self/mountinfo && echo procsys-mount=ro",
    )
    assert "procsys=ro" in out
    assert "root=ro" in out
    assert "tmp=rw" in out
    assert "procsys-mount=ro" in out


def test_uid_gid_additional_groups(rt: Runtime) -> None:
    def edit(spec: dict[str, Any]) -> None:
        spec["process"]["user"] = {"uid": 1000, "gid": 1000, "additionalGids": [100], "umask": 0o27}

    out = run(rt, "echo uid=$(id -u) gid=$(id -g) groups=$(id -G) mask=$(umask) user=$(id -un)", edit)
    assert "uid=1000 gid=1000" in out
    groups = out.split("groups=")[1].split("mask=")[0].split()
    assert "100" in groups
    assert "mask=0027" in out
    assert "user=skiff" in out


def test_user_namespace_mapping(rt: Runtime) -> None:
    def edit(spec: dict[str, Any]) -> None:
        spec["linux"]["namespaces"].append({"type": "user"})
        spec["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 200000, "size": 65536}]
        spec["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 200000, "size": 65536}]
        # The host's cgroup hierarchy cannot be mounted from an unprivileged user namespace.
        spec["mounts"] = [m for m in spec["mounts"] if m["destination"] != "/sys/fs/cgroup"]

    cid, bundle, _ = rt.bundle(["sh", "-c", "cat /proc/self/uid_map /proc/self/gid_map; id -u; sleep 60"], edit=edit)
    out = bundle.parent / "out"
    rt.create(cid, bundle, out=out).ok()
    rt.cmd("start", cid).ok()
    pid = rt.state(cid)["pid"]
    # From the host, the container's root is the mapped uid.
    with open(f"/proc/{pid}/status") as f:
        uids = next(line for line in f if line.startswith("Uid:")).split()[1:]
    assert uids == ["200000"] * 4
    from tests.integration.lowlevel.conftest import wait_until

    text = wait_until(lambda: (t := out.read_text()).count("\n") >= 3 and t)
    rows = [line.split() for line in text.splitlines()]
    assert rows[0] == ["0", "200000", "65536"], text
    assert rows[1] == ["0", "200000", "65536"], text
    assert rows[2] == ["0"], text
    rt.cmd("delete", "--force", cid).ok()
    rt.assert_nothing_left(cid, bundle)


def test_signals_start_at_their_defaults(rt: Runtime) -> None:
    # The test runner (Python) ignores SIGPIPE and SIGXFSZ; an ignored disposition survives execve,
    # so the runtime must reset them, as runc and crun do.
    out = run(rt, "grep -E '^Sig(Ign|Blk):' /proc/self/status; yes | head -n 1")
    fields = dict(line.split(":\t") for line in out.splitlines() if line.startswith("Sig"))
    assert fields == {"SigBlk": "0000000000000000", "SigIgn": "0000000000000000"}, out
    assert out.splitlines()[-1] == "y"

