"""HostConfig resources and security end to end: cpus/cpuset, ulimits, sysctls, security options,
the default seccomp profile, and --init, through docker-py and the real docker CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import docker
import docker.errors
import docker.types
import pytest

from tests.e2e.stack import Stack
from tests.support.tasks import wait_for

needs_cli = pytest.mark.skipif(shutil.which("docker") is None, reason="docker CLI not installed")
needs_tini = pytest.mark.skipif(not os.path.isfile("/usr/bin/tini-static"), reason="tini-static not installed")


def cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DOCKER_HOST=stack.base_url, DOCKER_CONFIG=str(stack.prefix / "docker-config"))
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=60, env=env)


def ok(stack: Stack, *args: str) -> str:
    result = cli(stack, *args)
    assert result.returncode == 0, f"{args}: {result.stderr}"
    return result.stdout


def status_fields(text: str) -> dict[str, str]:
    """Lines "Key:\tvalue" of /proc/self/status (and the like) as a dict."""
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in text.splitlines()) if v}


def cgroup_file(pid: int, controller: str, name: str) -> str:
    """A cgroup file of a process, v1 (the controller's hierarchy) or v2 (the unified one)."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            folder = next(p for p in Path("/sys/fs/cgroup").iterdir() if controller in p.name.split(","))
            return (folder / path.lstrip("/") / name).read_text().strip()
        if controllers == "" and Path("/sys/fs/cgroup/cgroup.controllers").exists():
            v2 = {"cpu.cfs_quota_us": "cpu.max", "cpuset.cpus": "cpuset.cpus"}.get(name, name)
            return (Path("/sys/fs/cgroup") / path.lstrip("/") / v2).read_text().strip()
    raise AssertionError(f"no {controller} cgroup for {pid}")


# ---- docker-py (the Engine API) ----


@needs_tini
def test_api_resources_security_and_inspect(client: docker.DockerClient) -> None:
    script = (
        "grep -E '^(NoNewPrivs|Seccomp|Cpus_allowed_list):' /proc/self/status; "
        "echo nofile:$(ulimit -Sn):$(ulimit -Hn); echo pid1:$(tr '\\0' ' ' < /proc/1/cmdline); sleep 300"
    )
    box = client.containers.run(
        "busybox",
        ["sh", "-c", script],
        detach=True,
        name="hc",
        nano_cpus=500_000_000,
        cpuset_cpus="0",
        ulimits=[docker.types.Ulimit(name="nofile", soft=1024, hard=2048)],
        security_opt=["no-new-privileges:true", "label=disable", "apparmor=unconfined"],
        init=True,
    )
    box.reload()
    pid = box.attrs["State"]["Pid"]
    # Output comes before "sleep"; wait until it is all there.
    logs = wait_for(lambda: (text := box.logs().decode()) and "pid1:" in text and text, 20, "the script's output")
    found = status_fields(logs)
    assert found["NoNewPrivs"] == "1" and found["Seccomp"] == "2" and found["Cpus_allowed_list"] == "0", logs
    assert found["nofile"] == "1024:2048", logs
    assert found["pid1"].startswith("/sbin/docker-init -- sh -c"), logs
    assert cgroup_file(pid, "cpuset", "cpuset.cpus") == "0"
    assert cgroup_file(pid, "cpu", "cpu.cfs_quota_us") in ("50000", "50000 100000")
    host = box.attrs["HostConfig"]
    assert host["NanoCpus"] == 500_000_000 and host["CpusetCpus"] == "0" and host["CpusetMems"] == ""
    assert host["Ulimits"] == [{"Name": "nofile", "Soft": 1024, "Hard": 2048}]
    assert host["SecurityOpt"] == ["no-new-privileges:true", "label=disable", "apparmor=unconfined"]
    assert host["Init"] is True
    # The command as the client gave it, not the init in front of it (inspect and the list alike).
    assert box.attrs["Path"] == "sh" and box.attrs["Args"][0] == "-c"
    assert client.api.containers(filters={"id": box.id})[0]["Command"].startswith("sh -c ")
    # docker update --cpus: the cgroup follows, and inspect shows NanoCpus (not a stale one, not a quota).
    reply = client.api._post_json(client.api._url("/containers/{0}/update", box.id), data={"NanoCpus": 1_500_000_000})
    assert reply.status_code == 200, reply.text
    box.reload()
    assert cgroup_file(pid, "cpu", "cpu.cfs_quota_us") in ("150000", "150000 100000")
    host = box.attrs["HostConfig"]
    assert host["NanoCpus"] == 1_500_000_000 and host["CpuQuota"] == 0, host
    box.remove(force=True)

    # Privileged: no filter; the defaults otherwise (no init, privileges may be gained).
    out = client.containers.run(
        "busybox", ["grep", "-E", "^(NoNewPrivs|Seccomp):", "/proc/self/status"], privileged=True, remove=True
    ).decode()
    assert status_fields(out) == {"NoNewPrivs": "0", "Seccomp": "0"}, out
    plain = client.containers.create("busybox", "true")
    assert "Init" not in plain.attrs["HostConfig"] and plain.attrs["HostConfig"]["SecurityOpt"] is None
    plain.remove()


def test_sysctls(stack: Stack, client: docker.DockerClient) -> None:
    sysctls = {"net.ipv4.ip_forward": "1", "kernel.shmmax": "123456789"}
    box = client.containers.create(
        "busybox", ["cat", "/proc/sys/net/ipv4/ip_forward", "/proc/sys/kernel/shmmax"], sysctls=sysctls
    )
    assert box.attrs["HostConfig"]["Sysctls"] == sysctls
    box.start()
    assert box.wait(timeout=30)["StatusCode"] == 0, box.attrs["State"]
    assert box.logs() == b"1\n123456789\n"
    box.remove()
    if shutil.which("docker") is None:
        return
    for network in ("bridge", "none"):
        fwd = ok(
            stack,
            "run",
            "--rm",
            "--network",
            network,
            "--sysctl",
            "net.ipv4.ip_forward=1",
            "busybox",
            "cat",
            "/proc/sys/net/ipv4/ip_forward",
        )
        assert fwd == "1\n", (network, fwd)


def test_api_default_seccomp_and_profiles(client: docker.DockerClient) -> None:
    # unshare(CLONE_NEWUSER) needs no capability: only the seccomp profile refuses it.
    probe = ["sh", "-c", "grep Seccomp: /proc/self/status; unshare -U true && echo unshare:ok || echo unshare:no"]
    default = client.containers.run("busybox", probe, remove=True).decode()
    assert status_fields(default) == {"Seccomp": "2", "unshare": "no"}, default
    unconfined = client.containers.run("busybox", probe, remove=True, security_opt=["seccomp=unconfined"]).decode()
    assert status_fields(unconfined) == {"Seccomp": "0", "unshare": "ok"}, unconfined
    # CAP_SYS_ADMIN lifts the namespace group, as in Docker's profile.
    admin = client.containers.run("busybox", probe, remove=True, cap_add=["SYS_ADMIN"]).decode()
    assert status_fields(admin) == {"Seccomp": "2", "unshare": "ok"}, admin
    # A Docker-format profile (archMap, includes) as the CLI sends it: the file's content.
    profile = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]}],
        "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
            {"names": ["chdir"], "action": "SCMP_ACT_ERRNO", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
        ],
    }
    out = client.containers.run(
        "busybox",
        ["sh", "-c", "mkdir /tmp/x 2>&1; cd /tmp && echo cd:ok"],
        remove=True,
        security_opt=[f"seccomp={json.dumps(profile)}"],
    ).decode()
    assert "Operation not permitted" in out and "cd:ok" in out, out


@pytest.mark.parametrize(
    ("host_config", "message"),
    [
        ({"SecurityOpt": ["foo"]}, 'invalid --security-opt 1: "foo"'),
        ({"SecurityOpt": ["bogus=1"]}, 'invalid --security-opt 2: "bogus=1"'),
        ({"SecurityOpt": ["no-new-privileges=maybe"]}, 'invalid --security-opt 2: "no-new-privileges=maybe"'),
        ({"SecurityOpt": ["seccomp={not json"]}, "Decoding seccomp profile failed"),
        ({"SecurityOpt": ['seccomp={"defaultAction": "SCMP_ACT_NOPE"}']}, "invalid seccomp profile"),
        ({"Ulimits": [{"Name": "bogus", "Soft": 1, "Hard": 2}]}, "invalid ulimit type: bogus"),
        ({"Ulimits": [{"Name": "nofile", "Soft": 3, "Hard": 2}]}, "soft limit must be less than or equal"),
        ({"Sysctls": {"kernel.hostname": "x"}}, "sysctl 'kernel.hostname' is not allowed"),
        ({"Sysctls": {"net.ipv4.ip_forward": "1"}, "NetworkMode": "host"}, "not allowed in host network mode"),
        ({"CpusetCpus": "abc"}, "Invalid value abc for cpuset cpus"),
        ({"CpusetCpus": "0-4095"}, "Requested CPUs are not available"),
        ({"NanoCpus": 500_000_000, "CpuQuota": 50_000}, "Nano CPUs and CPU Quota cannot both be set"),
        ({"NanoCpus": 1}, "Range of CPUs is from 0.01"),
        ({"Init": "yes"}, "invalid Init"),
    ],
)
def test_api_bad_input_is_400_and_leaves_nothing(
    client: docker.DockerClient, host_config: dict[str, object], message: str
) -> None:
    api = client.api
    reply = api.post(
        api._url("/containers/create"), json={"Image": "busybox", "Cmd": ["true"], "HostConfig": host_config}
    )
    assert reply.status_code == 400, reply.text
    assert message in reply.json()["message"], reply.json()
    assert client.containers.list(all=True) == []


def test_api_missing_init_binary(stack: Stack, client: docker.DockerClient, monkeypatch: pytest.MonkeyPatch) -> None:
    # The daemon reads SKIFF_INIT_PATH from its environment: restart it with a path that is not there.
    stack.stop("services.daemon")
    monkeypatch.setenv("SKIFF_INIT_PATH", str(stack.prefix / "no-such-init"))
    stack.start("services.daemon")
    api = client.api
    reply = api.post(
        api._url("/containers/create"), json={"Image": "busybox", "Cmd": ["true"], "HostConfig": {"Init": True}}
    )
    assert reply.status_code == 500, reply.text
    assert "no-such-init" in reply.json()["message"] and "SKIFF_INIT_PATH" in reply.json()["message"]
    assert client.containers.list(all=True) == []
    assert client.containers.run("busybox", "true", remove=True) == b""  # without --init all is well


# ---- the docker CLI ----


@needs_cli
@needs_tini
def test_cli_flags(stack: Stack, client: docker.DockerClient, tmp_path: Path) -> None:
    out = ok(
        stack,
        "run",
        "--rm",
        "--cpus",
        "0.5",
        "--cpuset-cpus",
        "0",
        "--ulimit",
        "nofile=1024:2048",
        "--security-opt",
        "no-new-privileges",
        "busybox",
        "sh",
        "-c",
        "grep -E '^(NoNewPrivs|Seccomp|Cpus_allowed_list):' /proc/self/status; echo nofile:$(ulimit -Sn):$(ulimit -Hn)",
    )
    assert status_fields(out) == {"NoNewPrivs": "1", "Seccomp": "2", "Cpus_allowed_list": "0", "nofile": "1024:2048"}, (
        out
    )
    unconfined = ok(
        stack, "run", "--rm", "--security-opt", "seccomp=unconfined", "busybox", "grep", "Seccomp:", "/proc/self/status"
    )
    assert status_fields(unconfined) == {"Seccomp": "0"}
    profile = tmp_path / "profile.json"
    profile.write_text(
        json.dumps(
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}],
            },
            indent=2,
        )
    )
    refused = cli(stack, "run", "--rm", "--security-opt", f"seccomp={profile}", "busybox", "mkdir", "/tmp/x")
    assert refused.returncode == 1 and "Operation not permitted" in refused.stderr, refused
    init = ok(stack, "run", "--rm", "--init", "busybox", "sh", "-c", "tr '\\0' ' ' < /proc/1/cmdline; echo; echo $$")
    cmdline, own_pid = init.splitlines()
    assert cmdline.startswith("/sbin/docker-init -- sh -c") and own_pid != "1", init
    ok(
        stack,
        "create",
        "--name",
        "insp",
        "--init",
        "--cpus",
        "1.5",
        "--cpuset-mems",
        "0",
        "--ulimit",
        "nproc=100:200",
        "--sysctl",
        "kernel.msgmax=65536",
        "--security-opt",
        "seccomp=unconfined",
        "busybox",
    )
    host = json.loads(ok(stack, "inspect", "insp"))[0]["HostConfig"]
    assert host["Init"] is True and host["NanoCpus"] == 1_500_000_000 and host["CpusetMems"] == "0"
    assert host["Ulimits"] == [{"Name": "nproc", "Soft": 100, "Hard": 200}]
    assert host["Sysctls"] == {"kernel.msgmax": "65536"} and host["SecurityOpt"] == ["seccomp=unconfined"]
    assert ok(stack, "inspect", "-f", "{{.HostConfig.Init}} {{.Path}}", "insp") == "true sh\n"
    bad = cli(stack, "run", "--rm", "--security-opt", "bogus=1", "busybox", "true")
    assert bad.returncode != 0 and "invalid --security-opt 2" in bad.stderr, bad.stderr
    assert ok(stack, "ps", "-aq").split() == [json.loads(ok(stack, "inspect", "insp"))[0]["Id"][:12]]
