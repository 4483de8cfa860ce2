"""HostConfig's resources and security in the OCI spec, and their parsing from create bodies."""

from __future__ import annotations

import errno
import json
import os
import platform
from pathlib import Path

import pytest

from services.common import seccomp_default
from services.common.capabilities import DEFAULT_CAPS
from services.common.errors import Internal, InvalidArgument
from services.common.oci_seccomp import validate_seccomp
from services.daemon.spec import build_spec, parse_cpu_list
from services.dockermodel.render import container_inspect
from services.dockermodel.request import container_config_from_request
from services.gen.skiff.daemon.v1 import Container


def spec_of(host: dict, tmp_path: Path, **body: object) -> dict:
    config = container_config_from_request({"Image": "busybox", "Cmd": ["sh"], "HostConfig": host, **body})
    return build_spec("a" * 64, {}, config, tmp_path)


def blocked(profile: dict) -> set[str]:
    return {name for rule in profile["syscalls"] if not rule.get("args") for name in rule["names"]}


def test_default_profile_blocks_and_lifts_per_capability() -> None:
    profile = seccomp_default.default_profile(list(DEFAULT_CAPS))
    validate_seccomp(profile)
    assert profile["defaultAction"] == "SCMP_ACT_ALLOW"
    names = blocked(profile)
    for name in (
        "kexec_load",
        "init_module",
        "reboot",
        "swapon",
        "keyctl",
        "bpf",
        "mount",
        "unshare",
        "setns",
        "open_by_handle_at",
        "perf_event_open",
        "userfaultfd",
        "clock_settime",
        "acct",
        "move_pages",
    ):
        assert name in names, name
    # What a container's init and busybox need stays allowed.
    for name in ("execve", "clone", "fork", "wait4", "chroot", "ptrace", "personality", "setuid", "capset"):
        assert name not in names, name
    clone = next(r for r in profile["syscalls"] if r["names"] == ["clone"])
    assert {a["value"] for a in clone["args"]} == set(seccomp_default._CLONE_NS_FLAGS)
    assert any(r["names"] == ["clone3"] and r["errnoRet"] == errno.ENOSYS for r in profile["syscalls"])
    admin = seccomp_default.default_profile([*DEFAULT_CAPS, "CAP_SYS_ADMIN", "CAP_SYS_TIME"])
    assert {"mount", "unshare", "setns", "clock_settime", "bpf"}.isdisjoint(blocked(admin))
    assert {"keyctl", "swapon", "kexec_load"} <= blocked(admin)
    assert not any(r["names"][0].startswith("clone") for r in admin["syscalls"])


def test_docker_profile_conversion() -> None:
    native = seccomp_default._NATIVE_ARCH[platform.machine()]
    profile = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "archMap": [
            {"architecture": native, "subArchitectures": ["SCMP_ARCH_X86"]},
            {"architecture": "SCMP_ARCH_NOPE", "subArchitectures": []},
        ],
        "syscalls": [
            {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW", "comment": "kept"},
            {"name": "mount", "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
            {"names": ["chroot"], "action": "SCMP_ACT_ALLOW", "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
            {"names": ["ptrace"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "4.8"}},
            {"names": ["vm86"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["SCMP_ARCH_NOPE"]}},
        ],
    }
    oci = seccomp_default.from_docker_profile(profile, list(DEFAULT_CAPS))
    validate_seccomp(oci)
    assert oci["architectures"] == [native, "SCMP_ARCH_X86"] and oci["defaultErrnoRet"] == 1
    assert [r["names"] for r in oci["syscalls"]] == [["read", "write"], ["chroot"], ["ptrace"]]
    admin = seccomp_default.from_docker_profile(profile, [*DEFAULT_CAPS, "CAP_SYS_ADMIN"])
    assert [r["names"] for r in admin["syscalls"]] == [["read", "write"], ["mount"], ["ptrace"]]
    with pytest.raises(InvalidArgument, match="use either 'architectures' or 'archMap'"):
        seccomp_default.from_docker_profile({**profile, "architectures": [native]}, [])
    with pytest.raises(InvalidArgument, match="defaultAction"):
        seccomp_default.from_docker_profile({"syscalls": []}, [])
    with pytest.raises(InvalidArgument, match="includes.caps"):
        seccomp_default.from_docker_profile(
            {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["x"], "includes": {"caps": 5}}]}, []
        )


def test_spec_resources_rlimits_security_init(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    init = tmp_path / "tini"
    init.write_bytes(b"")
    init.chmod(0o755)
    monkeypatch.setenv("SKIFF_INIT_PATH", str(init))
    spec = spec_of(
        {
            "NanoCpus": 250_000_000,
            "CpusetCpus": "0",
            "CpusetMems": "0",
            "CpuShares": 512,
            "Ulimits": [{"Name": "nofile", "Soft": 100, "Hard": 200}, {"Name": "nproc", "Soft": 5, "Hard": 6}],
            "Sysctls": {"net.ipv4.ip_forward": "1"},
            "SecurityOpt": ["no-new-privileges"],
            "Init": True,
        },
        tmp_path,
    )
    assert spec["linux"]["resources"]["cpu"] == {
        "quota": 25_000,
        "period": 100_000,
        "shares": 512,
        "cpus": "0",
        "mems": "0",
    }
    assert spec["process"]["rlimits"] == [
        {"type": "RLIMIT_NOFILE", "hard": 200, "soft": 100},
        {"type": "RLIMIT_NPROC", "hard": 6, "soft": 5},
    ]
    assert spec["linux"]["sysctl"] == {"net.ipv4.ip_forward": "1"}
    assert spec["process"]["noNewPrivileges"] is True
    assert spec["linux"]["seccomp"]["defaultAction"] == "SCMP_ACT_ALLOW"
    assert spec["process"]["args"] == ["/sbin/docker-init", "--", "sh"]
    assert {
        "destination": "/sbin/docker-init",
        "type": "bind",
        "source": str(init),
        "options": ["rbind", "ro", "nosuid", "nodev"],
    } in spec["mounts"]
    plain = spec_of({}, tmp_path)
    assert "cpu" not in plain["linux"]["resources"] and "sysctl" not in plain["linux"]
    assert plain["process"]["noNewPrivileges"] is False and plain["process"]["args"] == ["sh"]
    assert [r["type"] for r in plain["process"]["rlimits"]] == ["RLIMIT_NOFILE"]
    assert "seccomp" not in spec_of({"Privileged": True}, tmp_path)["linux"]
    assert "seccomp" not in spec_of({"SecurityOpt": ["seccomp=unconfined"]}, tmp_path)["linux"]
    custom = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]}
    got = spec_of({"SecurityOpt": [f"seccomp={json.dumps(custom)}"]}, tmp_path)["linux"]["seccomp"]
    assert got == custom
    monkeypatch.setenv("SKIFF_INIT_PATH", str(tmp_path / "missing"))
    with pytest.raises(Internal, match="SKIFF_INIT_PATH"):
        spec_of({"Init": True}, tmp_path)


@pytest.mark.parametrize(
    ("host", "message"),
    [
        ({"Ulimits": [{"Name": "bogus", "Soft": 1, "Hard": 1}]}, "invalid ulimit type: bogus"),
        ({"Ulimits": [{"Name": "core", "Soft": -1, "Hard": -1}]}, "negative"),
        ({"Ulimits": [{"Name": "core", "Soft": 2, "Hard": 1}]}, "soft limit must be"),
        ({"NanoCpus": 1}, "Range of CPUs"),
        ({"NanoCpus": (os.cpu_count() or 1) * 1_000_000_000 + 1}, "Range of CPUs"),
        ({"CpusetCpus": "0-100000"}, "Invalid value 0-100000 for cpuset cpus"),
        ({"CpusetCpus": "4096"}, "Requested CPUs are not available"),
        ({"CpusetMems": "64"}, "Requested memory nodes are not available"),
        ({"SecurityOpt": ['seccomp={"defaultAction": "SCMP_ACT_NOPE"}']}, "invalid seccomp profile"),
        ({"SecurityOpt": ['seccomp={"defaultAction": "SCMP_ACT_ALLOW", "syscalls": 5}']}, "invalid seccomp"),
    ],
)
def test_spec_refuses(tmp_path: Path, host: dict, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        spec_of(host, tmp_path)


@pytest.mark.parametrize(
    ("host", "message"),
    [
        ({"SecurityOpt": ["foo"]}, 'invalid --security-opt 1: "foo"'),
        ({"SecurityOpt": ["seccomp="]}, "invalid --security-opt 2"),
        ({"SecurityOpt": ["seccomp=[1]"]}, "expected a JSON object"),
        ({"SecurityOpt": "no-new-privileges"}, "invalid SecurityOpt"),
        ({"Sysctls": {"kernel.hostname": "x"}}, "not allowed"),
        ({"Sysctls": {"vm.swappiness": "1"}}, "not allowed"),
        ({"Sysctls": {"net.core.somaxconn": 1}}, "invalid Sysctls"),
        ({"Sysctls": {"net.core.somaxconn": "1"}, "NetworkMode": "host"}, "host network mode"),
        ({"Ulimits": [{"Soft": 1, "Hard": 1}]}, "Name is required"),
        ({"Ulimits": {"nofile": 1}}, "invalid Ulimits"),
        ({"NanoCpus": 1, "CpuPeriod": 100}, "Nano CPUs and CPU Period"),
        ({"CpusetCpus": "0,,1"}, "Invalid value"),
        ({"Init": 1}, "invalid Init"),
    ],
)
def test_create_body_refuses(host: dict, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        container_config_from_request({"Image": "busybox", "HostConfig": host})


def test_security_opt_forms_and_inspect() -> None:
    config = container_config_from_request(
        {
            "Image": "busybox",
            "Cmd": ["sh"],
            "HostConfig": {
                "SecurityOpt": [
                    "no-new-privileges=false",
                    "seccomp:unconfined",
                    "label=type:x",
                    "apparmor=p",
                    "disable",
                ],
                "Init": True,
                "Ulimits": [{"Name": "nofile", "Soft": 1, "Hard": 2}],
                "CpusetCpus": "0-1,3",
            },
        }
    )
    host = config.host
    assert host.no_new_privileges is False and host.seccomp_profile == "unconfined" and host.init
    assert container_config_from_request(
        {"Image": "b", "HostConfig": {"SecurityOpt": ["no-new-privileges:true"]}}
    ).host.no_new_privileges
    shown = container_inspect(Container(id="c" * 64, config=config, path_args=["/sbin/docker-init", "--", "sh"]))
    assert shown["Path"] == "sh" and shown["Args"] == []
    hc = shown["HostConfig"]
    assert hc["Init"] is True and hc["CpusetCpus"] == "0-1,3" and hc["NanoCpus"] == 0
    assert hc["Ulimits"] == [{"Name": "nofile", "Soft": 1, "Hard": 2}] and "Sysctls" not in hc
    assert hc["SecurityOpt"] == [
        "no-new-privileges=false",
        "seccomp:unconfined",
        "label=type:x",
        "apparmor=p",
        "disable",
    ]


def test_parse_cpu_list() -> None:
    assert parse_cpu_list("0-2,5") == {0, 1, 2, 5}
    for bad in ("", "a", "2-1", "1-", "-1"):
        with pytest.raises(ValueError):
            parse_cpu_list(bad)
