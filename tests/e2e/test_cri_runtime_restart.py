"""skiff-cri and the Docker side beside each other across restarts: Kubernetes' containers are tasks in
highlevel's k8s.io namespace, which the daemon's reconcile never touches and docker ps never shows;
skiff-cri finds its pods and containers again after a SIGKILL (an exit meanwhile included), and
rides out highlevel's restart."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import docker
from grpclib.client import Channel

from services.gen.runtime import v1 as cri
from services.gen.skiff.highlevel import v1 as hl
from tests.e2e.cri_stack import CriClient, CriStack, wait_state
from tests.e2e.stack import Stack
from tests.e2e.test_cri_runtime import container_config, cri_stack, pod_config, rt  # noqa: F401 - fixtures
from tests.support.tasks import wait_for

__all__ = ["cri_stack", "rt"]


def task_namespaces(stack: Stack) -> dict[str, str]:
    async def ask() -> dict[str, str]:
        channel = Channel(path=str(stack.paths.highlevel_socket))
        try:
            listed = await hl.TasksStub(channel).list(hl.ListTasksRequest(all_namespaces=True))
            return {t.id: t.namespace for t in listed.tasks}
        finally:
            channel.close()

    return asyncio.run(ask())


def test_restarts_and_namespaces(cri_stack: CriStack, rt: CriClient, stack: Stack,  # noqa: F811
                                 client: docker.DockerClient, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    config = pod_config("keep", cri_stack, tmp_path / "logs")
    pod = rt.rt("run_pod_sandbox", cri.RunPodSandboxRequest(config=config)).pod_sandbox_id
    mount = [cri.Mount(container_path="/shared", host_path=str(shared))]
    ids = {}
    for name, script in (("long", "exec sleep 1000"),
                         ("waiter", "while [ ! -e /shared/go ]; do sleep 0.1; done; exit 5")):
        ids[name] = rt.rt("create_container", cri.CreateContainerRequest(
            pod_sandbox_id=pod, config=container_config(name, script, mounts=mount),
            sandbox_config=config)).container_id
        rt.rt("start_container", cri.StartContainerRequest(container_id=ids[name]))
        wait_state(rt, ids[name], cri.ContainerState.CONTAINER_RUNNING)

    # Docker's side: its container is in "moby", the pod's in "k8s.io"; each lists only its own.
    docker_container = client.containers.run("busybox:latest", "sleep 1000", detach=True)
    spaces = task_namespaces(stack)
    assert spaces[docker_container.id] == "moby"
    assert {spaces[i] for i in ids.values()} == {"k8s.io"}
    assert [c.id for c in client.containers.list(all=True)] == [docker_container.id]
    assert {c.id for c in rt.rt("list_containers", cri.ListContainersRequest()).containers} == set(ids.values())

    # The daemon restarted: its reconcile leaves the pod's tasks and snapshots alone.
    stack.stop("services.daemon")
    stack.start("services.daemon")
    assert set(ids.values()) <= set(task_namespaces(stack))
    exec_ = rt.rt("exec_sync", cri.ExecSyncRequest(container_id=ids["long"], cmd=["echo", "alive"], timeout=10))
    assert exec_.stdout == b"alive\n"
    docker_container.remove(force=True)

    # skiff-cri SIGKILLed; a container exits while it is away; the new one knows both.
    cri_stack.stop(signal.SIGKILL)
    (shared / "go").touch()
    cri_stack.start()
    fresh = cri_stack.client()
    try:
        exited = wait_state(fresh, ids["waiter"], cri.ContainerState.CONTAINER_EXITED)
        assert (exited.exit_code, exited.reason) == (5, "Error")
        assert wait_state(fresh, ids["long"], cri.ContainerState.CONTAINER_RUNNING).started_at > 0
        assert fresh.rt("pod_sandbox_status", cri.PodSandboxStatusRequest(pod_sandbox_id=pod)).status.state == \
            cri.PodSandboxState.SANDBOX_READY

        # highlevel restarted under a running container: its exit is still seen, its stop works.
        stack.stop("services.highlevel")
        stack.start("services.highlevel")
        wait_for(lambda: ids["long"] in task_namespaces(stack), 20, "the task recovered by highlevel")
        assert task_namespaces(stack)[ids["long"]] == "k8s.io"
        fresh.rt("stop_container", cri.StopContainerRequest(container_id=ids["long"], timeout=0))
        assert wait_state(fresh, ids["long"], cri.ContainerState.CONTAINER_EXITED).exit_code == 137
    finally:
        fresh.close()
