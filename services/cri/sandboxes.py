"""Pods: RunPodSandbox, StopPodSandbox, RemovePodSandbox, and what status and list read.

A pod is held namespaces (podns.py): its network namespace (unless on the node's network) with the
CNI network attached, an IPC namespace (unless the node's) and a UTS namespace with its hostname;
a pause task (pause.py, the pod's id) whose PID namespace the containers share; its resolv.conf,
hosts and hostname files; and its cgroup parent, under which its containers' cgroups go.
Everything made is undone when a step fails, and by Stop (network) and Remove.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from services.common.errors import FailedPrecondition, InvalidArgument, SkiffError
from services.common.grpc import call, client_errors
from services.cri import cni, pause, podfiles, podns
from services.cri.settings import NAMESPACE
from services.cri.state import CriState, pod_name
from services.cri.store import SandboxRecord, encode_config
from services.gen.runtime.v1 import NamespaceMode, PodSandboxConfig, Protocol
from services.gen.skiff.highlevel import v1 as hl

log = structlog.get_logger(service="cri")

PROTOCOLS = {Protocol.TCP: "tcp", Protocol.UDP: "udp", Protocol.SCTP: "sctp"}


def port_mappings(config: PodSandboxConfig) -> list[dict[str, Any]]:
    """The CNI portMappings capability's entries: only the ports published on the node."""
    return [{"hostPort": p.host_port, "containerPort": p.container_port, "protocol": PROTOCOLS.get(p.protocol, "tcp"),
             **({"hostIP": p.host_ip} if p.host_ip else {})}
            for p in config.port_mappings if p.host_port > 0]


class SandboxManager:
    def __init__(self, state: CriState, tasks: hl.TasksStub, stop_containers: Callable[[str], Awaitable[None]],
                 remove_containers: Callable[[str], Awaitable[None]]) -> None:
        self.state = state
        self.tasks = tasks
        self.settings = state.settings
        self.cni = cni.CniRunner(self.settings.cni_bin_dirs)
        self._stop_containers = stop_containers
        self._remove_containers = remove_containers
        self.locks: dict[str, asyncio.Lock] = {}

    def _lock(self, id_: str) -> asyncio.Lock:
        return self.locks.setdefault(id_, asyncio.Lock())

    def network_ready(self) -> tuple[bool, str]:
        try:
            cni.load_network(self.settings.cni_conf_dir)
        except SkiffError as exc:
            return False, exc.message
        return True, ""

    async def run(self, config: PodSandboxConfig, runtime_handler: str) -> str:
        if runtime_handler not in ("", "skiff", "runc"):
            raise FailedPrecondition(f"runtime handler `{runtime_handler}`: not configured")
        id_ = secrets.token_hex(32)
        record = SandboxRecord(id=id_, config_b64=encode_config(config), created_at=time.time_ns())
        name = pod_name(record)
        self.state.reserve(name, id_)
        try:
            await self._make(record, config)
        except BaseException:
            self.state.release(name, id_)
            raise
        log.info("pod sandbox ready", id=id_, pod=name, ip=record.ip)
        return id_

    async def _make(self, record: SandboxRecord, config: PodSandboxConfig) -> None:
        opts = config.linux.security_context.namespace_options
        record.host_network = opts.network == NamespaceMode.NODE
        kinds = ([] if record.host_network else ["net", "uts"]) + ([] if opts.ipc == NamespaceMode.NODE else ["ipc"])
        folder = self.settings.run / "pods" / record.id
        record.files = str(folder / "files")
        record.cgroup_parent = config.linux.cgroup_parent or f"/{self.settings.cgroup_parent}"
        # As containerd: a pod that names no hostname has the node's (kubelet always names one).
        hostname = config.hostname or os.uname().nodename
        if len(hostname.encode()) > 64:
            raise InvalidArgument(f"hostname `{hostname}`: longer than 64 bytes")
        try:
            pins = await asyncio.to_thread(podns.pin, folder / "ns", kinds, hostname) if kinds else {}
            record.netns, record.ipc, record.uts = pins.get("net", ""), pins.get("ipc", ""), pins.get("uts", "")
            if not record.host_network:
                network = await asyncio.to_thread(cni.load_network, self.settings.cni_conf_dir)
                attached = await self.cni.add(network, record.id, record.netns, config.metadata.namespace,
                                              config.metadata.name, port_mappings(config))
                record.cni_result = json.dumps(attached.result)
                record.ip = attached.ips[0] if attached.ips else ""
                record.additional_ips = attached.ips[1:]
            await asyncio.to_thread(podfiles.write, folder / "files", hostname, record.ip, config.dns_config)
            # As containerd's pause container: always there, so a container asking for the pod's PID
            # namespace (POD, proto3's default) always has one to join.
            await self._start_pause(record, host_pid=opts.pid == NamespaceMode.NODE)
            self.state.sandboxes[record.id] = record
            self.state.save(record)
        except BaseException:
            self.state.sandboxes.pop(record.id, None)
            with contextlib.suppress(Exception):
                await self._stop_pause(record)
            with contextlib.suppress(Exception):
                await self._teardown_network(record)
            await asyncio.to_thread(self._remove_files, record)
            raise

    async def _start_pause(self, record: SandboxRecord, host_pid: bool) -> None:
        """The pid 1 of the pod's shared PID namespace (pause.py): a task with the pod's id."""
        program = await asyncio.to_thread(pause.install, self.settings.run / "pause")
        joined = [{"type": t, "path": p} for t, p in (("network", record.netns), ("ipc", record.ipc),
                                                     ("uts", record.uts)) if p]
        spec = pause.spec(program, joined, f"{record.cgroup_parent.rstrip('/')}/{record.id}", host_pid)
        await call(self.tasks.create(hl.CreateTaskRequest(id=record.id, spec=json.dumps(spec).encode(),
                                                          runtime=self.settings.runtime, namespace=NAMESPACE)))
        record.pause_pid = (await call(self.tasks.start(hl.StartRequest(id=record.id)))).pid

    async def _stop_pause(self, record: SandboxRecord) -> None:
        """SIGKILL (pid 1 ignores the rest), its exit, its task deleted; idempotent."""
        if not record.pause_pid:
            return
        with contextlib.suppress(SkiffError), client_errors():
            await self.tasks.kill(hl.KillRequest(id=record.id, signal=9, all=True))
            async for answer in self.tasks.wait(hl.WaitRequest(id=record.id)):
                if answer.exited:
                    break
        with contextlib.suppress(SkiffError):
            await call(self.tasks.delete(hl.DeleteTaskRequest(id=record.id, force=True)))
        record.pause_pid = 0

    async def _teardown_network(self, record: SandboxRecord) -> None:
        """CNI DEL (its addresses and port rules go) and the pins released; idempotent."""
        if not record.host_network and record.cni_result and not record.network_torn_down:
            config = record.config
            network = await asyncio.to_thread(cni.load_network, self.settings.cni_conf_dir)
            await self.cni.delete(network, record.id, record.netns, config.metadata.namespace,
                                  config.metadata.name, port_mappings(config), json.loads(record.cni_result))
        record.network_torn_down = True
        await asyncio.to_thread(podns.release, self.settings.run / "pods" / record.id / "ns")

    def _remove_files(self, record: SandboxRecord) -> None:
        podns.release(self.settings.run / "pods" / record.id / "ns")
        shutil.rmtree(self.settings.run / "pods" / record.id, ignore_errors=True)

    async def stop(self, id_: str) -> None:
        """Idempotent: every container killed, the network torn down, the pod no longer ready."""
        record = self.state.sandbox(id_)
        async with self._lock(record.id):
            await self._stop_containers(record.id)
            await self._stop_pause(record)
            if not record.network_torn_down:
                await self._teardown_network(record)
            record.ready = False
            self.state.save(record)
        log.info("pod sandbox stopped", id=record.id)

    async def remove(self, id_: str) -> None:
        """Idempotent: an unknown pod is already removed."""
        try:
            record = self.state.sandbox(id_)
        except SkiffError:
            return
        async with self._lock(record.id):
            await self._stop_containers(record.id)
            await self._remove_containers(record.id)
            await self._stop_pause(record)
            if not record.network_torn_down:
                await self._teardown_network(record)
            await asyncio.to_thread(self._remove_files, record)
            self.state.sandboxes.pop(record.id, None)
            self.state.sandbox_store.delete(record.id)
            self.state.release(pod_name(record), record.id)
        self.locks.pop(record.id, None)
        log.info("pod sandbox removed", id=record.id)
