"""Capabilities, noNewPrivileges and seccomp as config.json asks, read from inside the container."""

from __future__ import annotations

from typing import Any

from tests.integration.lowlevel.conftest import Runtime

CAP_CHOWN, CAP_KILL, CAP_NET_BIND_SERVICE = 0, 5, 10


def run(rt: Runtime, script: str, edit: Any = None) -> str:
    cid, bundle, _ = rt.bundle(["sh", "-c", script], edit=edit)
    r = rt.cmd("run", "--bundle", str(bundle), cid)
    assert r.returncode == 0, r
    return r.stdout


def status_fields(text: str) -> dict[str, str]:
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in text.splitlines()) if v}


def test_capabilities_as_asked(rt: Runtime) -> None:
    caps = ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"]

    def edit(spec: dict[str, Any]) -> None:
        spec["process"]["capabilities"] = {
            "bounding": caps,
            "effective": caps,
            "permitted": caps,
            "inheritable": [],
            "ambient": [],
        }

    fields = status_fields(run(rt, "cat /proc/self/status", edit))
    want = (1 << CAP_CHOWN) | (1 << CAP_KILL) | (1 << CAP_NET_BIND_SERVICE)
    assert int(fields["CapBnd"], 16) == want
    assert int(fields["CapEff"], 16) == want
    assert int(fields["CapPrm"], 16) == want
    assert int(fields["CapInh"], 16) == 0
    assert int(fields["CapAmb"], 16) == 0


def test_capabilities_non_root_ambient(rt: Runtime) -> None:
    def edit(spec: dict[str, Any]) -> None:
        spec["process"]["user"] = {"uid": 1000, "gid": 1000}
        c = ["CAP_NET_BIND_SERVICE"]
        spec["process"]["capabilities"] = {
            k: c for k in ("bounding", "effective", "permitted", "inheritable", "ambient")
        }

    fields = status_fields(run(rt, "cat /proc/self/status", edit))
    want = 1 << CAP_NET_BIND_SERVICE
    assert int(fields["CapEff"], 16) == want
    assert int(fields["CapAmb"], 16) == want
    assert int(fields["CapBnd"], 16) == want
    assert fields["Uid"].split()[0] == "1000"


def test_no_new_privileges(rt: Runtime) -> None:
    on = status_fields(run(rt, "cat /proc/self/status"))
    assert on["NoNewPrivs"] == "1"

    def off(spec: dict[str, Any]) -> None:
        spec["process"]["noNewPrivileges"] = False

    assert status_fields(run(rt, "cat /proc/self/status", off))["NoNewPrivs"] == "0"


def test_seccomp_denies_mkdir_with_errno(rt: Runtime) -> None:
    def edit(spec: dict[str, Any]) -> None:
        spec["linux"]["seccomp"] = {
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}],
        }

    out = run(rt, "mkdir /tmp/d 2>&1; echo rc=$?; touch /tmp/f && echo touch=ok; grep Seccomp: /proc/self/status", edit)
    assert "Operation not permitted" in out
    assert "rc=1" in out
    assert "touch=ok" in out
    assert "Seccomp:\t2" in out


def test_seccomp_errno_ret_value(rt: Runtime) -> None:
    def edit(spec: dict[str, Any]) -> None:
        spec["linux"]["seccomp"] = {
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 28}],
        }

    out = run(rt, "mkdir /tmp/d 2>&1; true", edit)
    assert "No space left on device" in out


def test_seccomp_argument_filter(rt: Runtime) -> None:
    # chmod to mode 0777 is refused; any other mode passes. The mode is compared under a mask, as
    # some callers pass the file type bits along.
    mode_777 = {"value": 0o7777, "valueTwo": 0o777, "op": "SCMP_CMP_MASKED_EQ"}

    def edit(spec: dict[str, Any]) -> None:
        spec["linux"]["seccomp"] = {
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [
                {
                    "names": ["chmod", "fchmod"],
                    "action": "SCMP_ACT_ERRNO",
                    "errnoRet": 1,
                    "args": [{"index": 1, **mode_777}],
                },
                {"names": ["fchmodat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1, "args": [{"index": 2, **mode_777}]},
            ],
        }

    out = run(
        rt,
        "touch /tmp/f; chmod 777 /tmp/f 2>/dev/null && echo a=ok || echo a=denied; "
        "chmod 700 /tmp/f && echo b=ok; stat -c %a /tmp/f",
        edit,
    )
    assert "a=denied" in out
    assert "b=ok" in out
    assert out.split()[-1] == "700"
