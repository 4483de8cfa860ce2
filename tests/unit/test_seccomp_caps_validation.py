"""Validation of seccomp and capability configs: no root, nothing loaded."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from services.common.errors import InvalidArgument
from services.common.oci_seccomp import validate_seccomp
from services.lowlevel.capabilities import CAPABILITIES, _mask, last_cap, validate_capabilities

GOOD_PROFILE: dict = {
    "defaultAction": "SCMP_ACT_ERRNO",
    "defaultErrnoRet": 1,
    "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32", "SCMP_ARCH_AARCH64"],
    "flags": ["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW"],
    "syscalls": [
        {"names": ["read", "write", "no_such_syscall"], "action": "SCMP_ACT_ALLOW"},
        {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
        {"names": ["ptrace"], "action": "SCMP_ACT_TRACE"},
        {
            "names": ["personality"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": 0xFFFFFFFF, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}],
        },
        {"names": ["reboot"], "action": "SCMP_ACT_KILL_PROCESS"},
        {"names": ["swapon"], "action": "SCMP_ACT_LOG"},
    ],
}


def with_rule(**rule: object) -> dict:
    return {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["kill"], **rule}]}


def test_good_profile_validates() -> None:
    validate_seccomp(GOOD_PROFILE)


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"defaultAction": "SCMP_ACT_BOGUS"}, "seccomp.defaultAction"),
        ({}, "seccomp.defaultAction"),
        ({"defaultAction": "SCMP_ACT_NOTIFY"}, "SCMP_ACT_NOTIFY is not supported"),
        ({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": -1}, "seccomp.defaultErrnoRet"),
        ({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_Z80"]}, "seccomp.architectures"),
        ({"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_BOGUS"]}, "seccomp.flags"),
        ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": {}}, "seccomp.syscalls"),
        (with_rule(action="SCMP_ACT_NOPE"), r"seccomp.syscalls\[0\].action"),
        (with_rule(action="SCMP_ACT_NOTIFY"), r"seccomp.syscalls\[0\].action"),
        (with_rule(action="SCMP_ACT_ERRNO", errnoRet="EPERM"), r"seccomp.syscalls\[0\].errnoRet"),
        (
            with_rule(action="SCMP_ACT_ERRNO", args=[{"index": 1, "value": 1, "op": "SCMP_CMP_SORTA"}]),
            r"seccomp.syscalls\[0\].args\[0\].op",
        ),
        (
            with_rule(action="SCMP_ACT_ERRNO", args=[{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]),
            r"seccomp.syscalls\[0\].args\[0\].index",
        ),
        (
            with_rule(action="SCMP_ACT_ERRNO", args=[{"index": 0, "value": -1, "op": "SCMP_CMP_EQ"}]),
            r"seccomp.syscalls\[0\].args\[0\].value",
        ),
        (
            {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": [], "action": "SCMP_ACT_ERRNO"}]},
            r"seccomp.syscalls\[0\].names",
        ),
    ],
)
def test_bad_seccomp_config(config: dict, field: str) -> None:
    with pytest.raises(InvalidArgument, match=field):
        validate_seccomp(config)


def test_capability_table() -> None:
    assert len(CAPABILITIES) == 41
    assert CAPABILITIES["CAP_CHOWN"] == 0
    assert CAPABILITIES["CAP_SYS_ADMIN"] == 21
    assert CAPABILITIES["CAP_CHECKPOINT_RESTORE"] == 40
    assert sorted(CAPABILITIES.values()) == list(range(41))
    assert last_cap() >= 36  # every kernel this runs on is newer than 3.16


def test_good_capabilities_validate() -> None:
    names = list(CAPABILITIES)
    validate_capabilities(
        {
            "bounding": names,
            "effective": names,
            "permitted": names,
            "inheritable": [],
            "ambient": ["CAP_NET_BIND_SERVICE"],
        }
    )
    validate_capabilities({})


@pytest.mark.parametrize(
    ("caps", "field"),
    [
        ({"bounding": ["CAP_KILL", "CAP_FLY"]}, "capabilities.bounding: unknown capability 'CAP_FLY'"),
        ({"ambient": ["KILL"]}, "capabilities.ambient"),
        ({"effective": "CAP_KILL"}, "capabilities.effective"),
    ],
)
def test_bad_capabilities(caps: dict, field: str) -> None:
    with pytest.raises(InvalidArgument, match=field):
        validate_capabilities(caps)


def test_imports_stay_light() -> None:
    # These modules load in every container launch: they may pull in ctypes and our own error
    # module, nothing else (libseccomp itself is opened only when a filter is loaded).
    code = (
        "import sys; before = set(sys.modules); "
        "import services.common.errors; mid = set(sys.modules); "
        "import services.lowlevel.seccomp, services.lowlevel.capabilities; "
        "print(' '.join(sorted(set(sys.modules) - mid))); "
        "print('libseccomp' in open('/proc/self/maps').read())"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSTARTUP"}
    lines = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True, env=env
    ).stdout.splitlines()
    out = lines[0].split()
    allowed = {
        "ctypes",
        "_ctypes",
        "struct",
        "_struct",
        "ctypes._endian",
        # Tiny modules ctypes pulls in once enum (which used to bring them) is gone.
        "types",
        "errno",
        "services.lowlevel",
        "services.lowlevel.seccomp",
        "services.common.oci_seccomp",  # the pure schema, shared with the daemon
        "services.lowlevel.capabilities",
        "services.lowlevel.libc",  # the foreign calls through _ctypes alone
        "services.lowlevel.fastos",  # os's part the runtime needs, without importing os
        "services.lowlevel.fastpath",
    }
    assert set(out) <= allowed, set(out) - allowed
    assert lines[1] == "False", "libseccomp was opened at import"


def test_caps_beyond_kernel_last_cap_are_ignored() -> None:
    # As on a kernel whose cap_last_cap is 38: CAP_BPF and CAP_CHECKPOINT_RESTORE drop out.
    caps = {"permitted": ["CAP_KILL", "CAP_BPF", "CAP_CHECKPOINT_RESTORE"]}
    assert _mask(caps, "permitted", 38) == 1 << 5
    assert _mask(caps, "permitted", 40) == (1 << 5) | (1 << 39) | (1 << 40)
