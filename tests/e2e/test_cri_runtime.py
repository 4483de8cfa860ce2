"""skiff-cri's RuntimeService driven over its gRPC socket: real pods (held namespaces, a CNI bridge
network of the test's own) and busybox containers on a Skiff stack; nothing left after."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from services.gen.runtime import v1 as cri
from tests.e2e.conftest import CALL_FAILED
from tests.e2e.cri_stack import CriClient, CriStack, wait_state
from tests.e2e.stack import Stack
from tests.support.tasks import wait_for


@pytest.fixture
def cri_stack(stack: Stack, client: docker.DockerClient, tmp_path: Path,
              request: pytest.FixtureRequest) -> Iterator[CriStack]:
    """skiff-cri on the stack (busybox:latest loaded through Docker's API: one content store)."""
    s = CriStack(stack, tmp_path)
    s.write_cni()
    try:
        s.start()
        yield s
        if request.node.stash.get(CALL_FAILED, False) and s.log.exists():
            print("---- skiff-cri: last lines of cri.log", *s.log.read_text().splitlines()[-60:], sep="\n")
        c = s.client()
        try:
            for pod in c.rt("list_pod_sandbox", cri.ListPodSandboxRequest()).items:
                c.rt("stop_pod_sandbox", cri.StopPodSandboxRequest(pod_sandbox_id=pod.id))
                c.rt("remove_pod_sandbox", cri.RemovePodSandboxRequest(pod_sandbox_id=pod.id))
            assert c.rt("list_containers", cri.ListContainersRequest()).containers == []
        finally:
            c.close()
        s.stop()
        assert not list((stack.paths.run / "cri" / "pods").glob("*")), "pod folders left"
    finally:
        s.stop(9)
        s.remove_pod_cgroups()
        s.remove_bridge()


@pytest.fixture
def rt(cri_stack: CriStack) -> Iterator[CriClient]:
    c = cri_stack.client()
    try:
        yield c
    finally:
        c.close()


def pod_config(name: str, cri_stack: CriStack, logs: Path, **linux: object) -> cri.PodSandboxConfig:
    return cri.PodSandboxConfig(
        metadata=cri.PodSandboxMetadata(name=name, uid=f"uid-{name}", namespace="default", attempt=0),
        hostname=name, log_directory=str(logs), labels={"app": name},
        linux=cri.LinuxPodSandboxConfig(cgroup_parent=f"/{cri_stack.cgroup_parent}/pod-{name}", **linux))


def container_config(name: str, script: str, **more: object) -> cri.ContainerConfig:
    return cri.ContainerConfig(metadata=cri.ContainerMetadata(name=name), image=cri.ImageSpec(image="busybox:latest"),
                               command=["sh", "-c", script], log_path=f"{name}.log", labels={"c": name}, **more)


def log_lines(path: Path) -> list[tuple[str, str, str]]:
    """(stream, tag, text) of each CRI log line; the stamp checked as RFC 3339 with nanoseconds."""
    out = []
    for line in path.read_text().splitlines():
        stamp, stream, tag, text = line.split(" ", 3)
        assert stamp.endswith("Z") and len(stamp.split(".")[1]) == 10, stamp
        out.append((stream, tag, text))
    return out


def test_pod_and_container_life_end_to_end(cri_stack: CriStack, rt: CriClient, client: docker.DockerClient,
                                           tmp_path: Path) -> None:
    version = rt.rt("version", cri.VersionRequest())
    assert (version.runtime_name, version.runtime_api_version) == ("skiff", "v1")
    conditions = {c.type: c.status for c in rt.rt("status", cri.StatusRequest()).status.conditions}
    assert conditions == {"RuntimeReady": True, "NetworkReady": True}

    logs = tmp_path / "logs"
    config = pod_config("web", cri_stack, logs)
    config.dns_config = cri.DnsConfig(servers=["10.9.9.9"], searches=["svc.test"], options=["ndots:5"])
    pod = rt.rt("run_pod_sandbox", cri.RunPodSandboxRequest(config=config)).pod_sandbox_id
    status = rt.rt("pod_sandbox_status", cri.PodSandboxStatusRequest(pod_sandbox_id=pod)).status
    assert status.state == cri.PodSandboxState.SANDBOX_READY
    assert cri_stack.subnet is not None and status.network.ip.startswith(str(cri_stack.subnet.network_address)[:-1])
    with pytest.raises(Exception, match="reserved"):  # the same pod name twice
        rt.rt("run_pod_sandbox", cri.RunPodSandboxRequest(config=config))
    listed = rt.rt("list_pod_sandbox", cri.ListPodSandboxRequest(filter=cri.PodSandboxFilter(
        label_selector={"app": "web"}))).items
    assert [p.id for p in listed] == [pod]
    assert rt.rt("list_pod_sandbox", cri.ListPodSandboxRequest(filter=cri.PodSandboxFilter(
        label_selector={"app": "other"}))).items == []

    script = "echo hello; echo oops >&2; cat /etc/resolv.conf; hostname; exec sleep 1000"
    # A PID namespace of its own (kubelet's default): sh is its pid 1.
    own_pids = cri.LinuxContainerConfig(security_context=cri.LinuxContainerSecurityContext(
        namespace_options=cri.NamespaceOption(pid=cri.NamespaceMode.CONTAINER)))
    cid = rt.rt("create_container", cri.CreateContainerRequest(
        pod_sandbox_id=pod, config=container_config("main", script, envs=[cri.KeyValue(key="GREETING", value="hi")],
                                                    linux=own_pids), sandbox_config=config)).container_id
    assert wait_state(rt, cid, cri.ContainerState.CONTAINER_CREATED).state == cri.ContainerState.CONTAINER_CREATED
    rt.rt("start_container", cri.StartContainerRequest(container_id=cid))
    running = wait_state(rt, cid, cri.ContainerState.CONTAINER_RUNNING)
    assert running.log_path == str(logs / "main.log") and running.started_at > 0

    log = logs / "main.log"
    wait_for(lambda: log.exists() and "web" in log.read_text(), 20, "the container's log")
    lines = log_lines(log)
    assert ("stdout", "F", "hello") in lines and ("stderr", "F", "oops") in lines
    assert ("stdout", "F", "nameserver 10.9.9.9") in lines and ("stdout", "F", "search svc.test") in lines
    assert ("stdout", "F", "web") in lines  # the pod's hostname, from its UTS namespace

    # Kubernetes' containers are not Docker's: the daemon's list does not show them.
    assert client.api.containers(all=True) == []

    done = rt.rt("exec_sync", cri.ExecSyncRequest(container_id=cid, cmd=["sh", "-c", "echo $GREETING; id -u; "
                                                                           "echo bad >&2; exit 3"], timeout=10))
    assert (done.stdout, done.stderr, done.exit_code) == (b"hi\n0\n", b"bad\n", 3)
    with pytest.raises(Exception, match="timed out"):
        rt.rt("exec_sync", cri.ExecSyncRequest(container_id=cid, cmd=["sleep", "30"], timeout=1))

    # Exec, Attach and PortForward answer with the streaming server's one-time URLs (its own tests use them).
    urls = [rt.rt("exec", cri.ExecRequest(container_id=cid, cmd=["true"], stdout=True)).url,
            rt.rt("attach", cri.AttachRequest(container_id=cid, stdout=True)).url,
            rt.rt("port_forward", cri.PortForwardRequest(pod_sandbox_id=pod, port=[80])).url]
    assert all(u.startswith("http://127.0.0.1:") for u in urls) and len(set(urls)) == 3, urls

    stats = rt.rt("container_stats", cri.ContainerStatsRequest(container_id=cid)).stats
    assert stats.attributes.id == cid and stats.cpu.usage_core_nano_seconds.value > 0
    assert stats.memory.working_set_bytes.value > 0
    pod_stats = rt.rt("pod_sandbox_stats", cri.PodSandboxStatsRequest(pod_sandbox_id=pod)).stats
    assert [c.attributes.id for c in pod_stats.linux.containers] == [cid]
    assert pod_stats.linux.process.process_count.value >= 1
    assert [s.attributes.id for s in rt.rt("list_container_stats", cri.ListContainerStatsRequest()).stats] == [cid]

    rt.rt("update_container_resources", cri.UpdateContainerResourcesRequest(
        container_id=cid, linux=cri.LinuxContainerResources(cpu_shares=512, memory_limit_in_bytes=64 << 20)))
    limit = Path(f"/sys/fs/cgroup/memory/{cri_stack.cgroup_parent}/pod-web/{cid}/memory.limit_in_bytes")
    assert int(limit.read_text()) == 64 << 20

    # kubelet's rotation: rename, then reopen; the next line goes to a new file.
    log.rename(logs / "main.log.1")
    rt.rt("reopen_container_log", cri.ReopenContainerLogRequest(container_id=cid))
    assert log.exists()
    rt.rt("exec_sync", cri.ExecSyncRequest(container_id=cid, cmd=["sh", "-c", "echo later > /proc/1/fd/1"],
                                           timeout=10))
    wait_for(lambda: ("stdout", "F", "later") in log_lines(log), 10, "a line in the reopened log")

    by_state = rt.rt("list_containers", cri.ListContainersRequest(filter=cri.ContainerFilter(
        state=cri.ContainerStateValue(state=cri.ContainerState.CONTAINER_RUNNING)))).containers
    assert [c.id for c in by_state] == [cid]

    # sh as pid 1 ignores SIGTERM: the timeout runs out and SIGKILL ends it.
    started = time.monotonic()
    rt.rt("stop_container", cri.StopContainerRequest(container_id=cid, timeout=2))
    assert 2 <= time.monotonic() - started < 15
    exited = wait_state(rt, cid, cri.ContainerState.CONTAINER_EXITED)
    assert exited.exit_code == 137 and exited.reason == "Error" and exited.finished_at >= exited.started_at
    assert rt.rt("list_containers", cri.ListContainersRequest(filter=cri.ContainerFilter(
        state=cri.ContainerStateValue(state=cri.ContainerState.CONTAINER_RUNNING)))).containers == []

    rt.rt("remove_container", cri.RemoveContainerRequest(container_id=cid))
    rt.rt("remove_container", cri.RemoveContainerRequest(container_id=cid))  # idempotent
    rt.rt("stop_pod_sandbox", cri.StopPodSandboxRequest(pod_sandbox_id=pod))
    rt.rt("stop_pod_sandbox", cri.StopPodSandboxRequest(pod_sandbox_id=pod))  # idempotent
    assert rt.rt("pod_sandbox_status", cri.PodSandboxStatusRequest(pod_sandbox_id=pod)).status.state == \
        cri.PodSandboxState.SANDBOX_NOTREADY
    rt.rt("remove_pod_sandbox", cri.RemovePodSandboxRequest(pod_sandbox_id=pod))
    rt.rt("remove_pod_sandbox", cri.RemovePodSandboxRequest(pod_sandbox_id=pod))
    assert rt.rt("list_pod_sandbox", cri.ListPodSandboxRequest()).items == []
    with contextlib.suppress(FileNotFoundError):
        assert not any((cri_stack.stack.paths.run / "cri" / "pods").iterdir())
