"""skiff-cri: a container's security context and resources as the kernel enforces them, and its
exits (Completed, Error, OOMKilled), through the CRI RuntimeService."""

from __future__ import annotations

import json
from pathlib import Path

from services.gen.runtime import v1 as cri
from tests.e2e.cri_stack import CriClient, CriStack, wait_state
from tests.e2e.test_cri_runtime import container_config, cri_stack, pod_config, rt  # noqa: F401 - fixtures

__all__ = ["cri_stack", "rt"]


def run_to_end(rt: CriClient, pod: str, config: cri.PodSandboxConfig, name: str, script: str,
               **more: object) -> tuple[cri.ContainerStatus, str]:
    """Create and start a container, wait for its exit: its status and its stdout."""
    cid = rt.rt("create_container", cri.CreateContainerRequest(
        pod_sandbox_id=pod, config=container_config(name, script, **more), sandbox_config=config)).container_id
    rt.rt("start_container", cri.StartContainerRequest(container_id=cid))
    status = wait_state(rt, cid, cri.ContainerState.CONTAINER_EXITED, within=60)
    lines = Path(status.log_path).read_text().splitlines() if Path(status.log_path).exists() else []
    return status, "\n".join(line.split(" ", 3)[3] for line in lines)


def test_security_context_and_exits(cri_stack: CriStack, rt: CriClient, tmp_path: Path) -> None:  # noqa: F811
    config = pod_config("sec", cri_stack, tmp_path / "logs")
    pod = rt.rt("run_pod_sandbox", cri.RunPodSandboxRequest(config=config)).pod_sandbox_id

    status, out = run_to_end(rt, pod, config, "ok", "echo fine")
    assert (status.exit_code, status.reason, out) == (0, "Completed", "fine")
    status, _ = run_to_end(rt, pod, config, "bad", "exit 7")
    assert (status.exit_code, status.reason) == (7, "Error")

    # Users, groups, read-only root, no_new_privs and capabilities, as the process sees them.
    secure = cri.LinuxContainerSecurityContext(
        run_as_user=cri.Int64Value(1000), run_as_group=cri.Int64Value(100), supplemental_groups=[5],
        readonly_rootfs=True, no_new_privs=True,
        capabilities=cri.Capability(drop_capabilities=["ALL"], add_capabilities=["NET_RAW"]))
    status, out = run_to_end(
        rt, pod, config, "locked",
        "id -u; id -g; id -G; touch /x 2>/dev/null && echo writable || echo readonly; "
        "grep -E '^(CapEff|NoNewPrivs)' /proc/self/status",
        linux=cri.LinuxContainerConfig(security_context=secure))
    assert status.exit_code == 0, out
    lines = out.splitlines()
    assert lines[:2] == ["1000", "100"] and "5" in lines[2].split() and lines[3] == "readonly"
    assert "CapEff:\t0000000000000000" in out or "CapEff:\t0000000000002000" in out  # NET_RAW is bit 13
    assert "NoNewPrivs:\t1" in out

    # Default masked paths; a privileged container has them unmasked and every capability.
    status, out = run_to_end(rt, pod, config, "masked", "cat /proc/keys | wc -c")
    assert out.strip() == "0"
    privileged = cri.LinuxContainerSecurityContext(privileged=True)
    status, out = run_to_end(rt, pod, config, "priv", "grep CapEff /proc/self/status; ip link set lo mtu 9000 "
                             "&& echo netadmin", linux=cri.LinuxContainerConfig(security_context=privileged))
    own_bounding = [line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("CapBnd")]
    assert "netadmin" in out and own_bounding[0].replace("CapBnd", "CapEff") in out, out

    # A localhost seccomp profile: mkdir refused with EPERM; unconfined is allowed.
    profile = tmp_path / "no-mkdir.json"
    profile.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}))
    confined = cri.LinuxContainerSecurityContext(seccomp=cri.SecurityProfile(
        profile_type=cri.SecurityProfileProfileType.Localhost, localhost_ref=str(profile)))
    status, out = run_to_end(rt, pod, config, "seccomp", "mkdir /tmp/d && echo made || echo refused",
                             linux=cri.LinuxContainerConfig(security_context=confined))
    assert out.splitlines()[-1] == "refused" and "Operation not permitted" in out
    runtime_default = cri.LinuxContainerSecurityContext(seccomp_profile_path="runtime/default")
    status, out = run_to_end(rt, pod, config, "rtdefault", "mkdir /tmp/d && echo made; unshare -n true 2>&1 || "
                             "echo no-unshare", linux=cri.LinuxContainerConfig(security_context=runtime_default))
    assert "made" in out and "no-unshare" in out

    # Resources: a memory limit that the process outgrows is an OOM kill; oom_score_adj is clamped.
    limited = cri.LinuxContainerResources(memory_limit_in_bytes=16 << 20, oom_score_adj=-999, cpu_shares=256)
    status, out = run_to_end(rt, pod, config, "oom", "cat /proc/self/oom_score_adj; "
                             "x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo survived",
                             linux=cri.LinuxContainerConfig(resources=limited))
    own = int(Path("/proc/self/oom_score_adj").read_text())
    assert status.reason == "OOMKilled" and status.exit_code == 137, (status, out)
    assert out.splitlines()[0] == str(max(own, -999))


def test_shared_pid_namespace_has_pause_as_init(cri_stack: CriStack, rt: CriClient, tmp_path: Path) -> None:  # noqa: F811
    shared = cri.NamespaceOption(pid=cri.NamespaceMode.POD)
    config = pod_config("pids", cri_stack, tmp_path / "logs")
    config.linux.security_context = cri.LinuxSandboxSecurityContext(namespace_options=shared)
    pod = rt.rt("run_pod_sandbox", cri.RunPodSandboxRequest(config=config)).pod_sandbox_id
    in_pod = cri.LinuxContainerConfig(security_context=cri.LinuxContainerSecurityContext(namespace_options=shared))
    ids = []
    for name in ("first", "second"):
        cid = rt.rt("create_container", cri.CreateContainerRequest(
            pod_sandbox_id=pod, config=container_config(name, f"exec sleep 100{len(ids)}", linux=in_pod),
            sandbox_config=config)).container_id
        rt.rt("start_container", cri.StartContainerRequest(container_id=cid))
        wait_state(rt, cid, cri.ContainerState.CONTAINER_RUNNING)
        ids.append(cid)
    init = rt.rt("exec_sync", cri.ExecSyncRequest(container_id=ids[1], cmd=["cat", "/proc/1/cmdline"], timeout=10))
    assert init.stdout == b"/pause\x00"
    seen = rt.rt("exec_sync", cri.ExecSyncRequest(container_id=ids[1], cmd=["ps", "-o", "args"], timeout=10))
    assert b"sleep 1000" in seen.stdout and b"sleep 1001" in seen.stdout
    # The first container's end does not end the namespace: pause is its init.
    rt.rt("stop_container", cri.StopContainerRequest(container_id=ids[0], timeout=0))
    wait_state(rt, ids[0], cri.ContainerState.CONTAINER_EXITED)
    again = rt.rt("exec_sync", cri.ExecSyncRequest(container_id=ids[1], cmd=["cat", "/proc/1/cmdline"], timeout=10))
    assert again.stdout == b"/pause\x00"

    # runtime/default without CAP_SYS_ADMIN: sethostname refused (critest's check).
    profile = cri.LinuxContainerSecurityContext(seccomp_profile_path="runtime/default",
                                                capabilities=cri.Capability(add_capabilities=["SYS_ADMIN"]))
    status, out = run_to_end(rt, pod, config, "hostname-admin", "hostname changed && echo set",
                             linux=cri.LinuxContainerConfig(security_context=profile))
    assert out.splitlines()[-1] == "set"
    plain = cri.LinuxContainerSecurityContext(seccomp_profile_path="runtime/default")
    status, out = run_to_end(rt, pod, config, "hostname-plain", "hostname changed || echo refused",
                             linux=cri.LinuxContainerConfig(security_context=plain))
    assert out.splitlines()[-1] == "refused"
