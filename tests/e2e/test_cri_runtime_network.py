"""skiff-cri's pod networking: CNI addresses reachable from the node, containers of a pod sharing
localhost, port mappings through the portmap plugin, host-network pods."""

from __future__ import annotations

import subprocess
from pathlib import Path

from services.gen.runtime import v1 as cri
from tests.e2e.cri_stack import CriClient, CriStack, fetch, wait_state
from tests.e2e.test_cri_runtime import container_config, cri_stack, pod_config, rt  # noqa: F401 - fixtures
from tests.support.registry import free_port
from tests.support.tasks import wait_for

__all__ = ["cri_stack", "rt"]

SERVE = "mkdir -p /www && echo {body} > /www/index.html && exec httpd -f -p {port} -h /www"



def start(rt: CriClient, pod: str, config: cri.PodSandboxConfig, name: str, script: str) -> str:
    cid = rt.rt("create_container", cri.CreateContainerRequest(
        pod_sandbox_id=pod, config=container_config(name, script), sandbox_config=config)).container_id
    rt.rt("start_container", cri.StartContainerRequest(container_id=cid))
    wait_state(rt, cid, cri.ContainerState.CONTAINER_RUNNING)
    return cid


def test_pod_network_ports_and_host_network(cri_stack: CriStack, rt: CriClient, tmp_path: Path) -> None:  # noqa: F811
    host_port = free_port()
    config = pod_config("net", cri_stack, tmp_path / "logs")
    config.port_mappings = [cri.PortMapping(protocol=cri.Protocol.TCP, container_port=8080, host_port=host_port)]
    pod = rt.rt("run_pod_sandbox", cri.RunPodSandboxRequest(config=config)).pod_sandbox_id
    ip = rt.rt("pod_sandbox_status", cri.PodSandboxStatusRequest(pod_sandbox_id=pod)).status.network.ip
    start(rt, pod, config, "web", SERVE.format(body="from-the-pod", port=8080))

    # The node reaches the pod at its CNI address; another container of the pod at localhost.
    wait_for(lambda: fetch(f"http://{ip}:8080/") == "from-the-pod", 20, "the pod's server at its address")
    helper = start(rt, pod, config, "helper", "exec sleep 1000")
    done = rt.rt("exec_sync", cri.ExecSyncRequest(container_id=helper, cmd=["wget", "-qO-", "http://127.0.0.1:8080/"],
                                                  timeout=10))
    assert (done.exit_code, done.stdout) == (0, b"from-the-pod\n")

    # The published port, through portmap's DNAT, at the bridge's own address.
    assert cri_stack.subnet is not None
    gateway = str(next(cri_stack.subnet.hosts()))
    wait_for(lambda: fetch(f"http://{gateway}:{host_port}/") == "from-the-pod", 20, "the published port")

    # A pod on the node's network: no CNI, the node's devices, a server reachable on the node's loopback.
    host_config = pod_config("hostnet", cri_stack, tmp_path / "logs")
    host_config.linux.security_context = cri.LinuxSandboxSecurityContext(
        namespace_options=cri.NamespaceOption(network=cri.NamespaceMode.NODE))
    host_pod = rt.rt("run_pod_sandbox", cri.RunPodSandboxRequest(config=host_config)).pod_sandbox_id
    assert rt.rt("pod_sandbox_status", cri.PodSandboxStatusRequest(pod_sandbox_id=host_pod)).status.network.ip == ""
    port = free_port()
    start(rt, host_pod, host_config, "hostweb", SERVE.format(body="on-the-node", port=port))
    wait_for(lambda: fetch(f"http://127.0.0.1:{port}/") == "on-the-node", 20, "the host-network pod's server")

    rt.rt("stop_pod_sandbox", cri.StopPodSandboxRequest(pod_sandbox_id=pod))
    assert fetch(f"http://{ip}:8080/") is None  # its containers are gone with the stop
    assert fetch(f"http://{gateway}:{host_port}/") is None
    rules = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True, timeout=30).stdout
    assert pod not in rules  # portmap's DEL took the pod's DNAT chain (its comment names the pod)
