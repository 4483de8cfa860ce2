"""Container and pod statistics (ContainerStats, ListContainerStats, PodSandboxStats) from highlevel's
task stats: CPU time, memory (the working set as kubelet computes it: usage less inactive file
pages), the pod's process count; the writable layer's size is not measured (reported as 0)."""

from __future__ import annotations

import asyncio
import json
import time

from services.common.errors import SkiffError
from services.common.grpc import call
from services.cri.state import CriState
from services.cri.store import ContainerRecord, SandboxRecord
from services.gen.runtime.v1 import (
    ContainerAttributes,
    ContainerStats,
    CpuUsage,
    FilesystemIdentifier,
    FilesystemUsage,
    LinuxPodSandboxStats,
    MemoryUsage,
    PodSandboxAttributes,
    PodSandboxStats,
    ProcessUsage,
    UInt64Value,
)
from services.gen.skiff.highlevel import v1 as hl


def _working_set(raw: dict) -> int:
    memory = raw.get("memory") or {}
    usage = int((memory.get("usage") or {}).get("usage") or 0)
    extra = memory.get("raw") or memory.get("stats") or {}
    inactive = int(extra.get("total_inactive_file") or extra.get("inactive_file") or 0)
    return max(usage - inactive, 0)


class Stats:
    def __init__(self, state: CriState, tasks: hl.TasksStub) -> None:
        self.state = state
        self.tasks = tasks

    async def container(self, record: ContainerRecord) -> ContainerStats:
        now = time.time_ns()
        m = record.config.metadata
        stats = ContainerStats(
            attributes=ContainerAttributes(id=record.id, metadata=m, labels=dict(record.config.labels),
                                           annotations=dict(record.config.annotations)),
            writable_layer=FilesystemUsage(timestamp=now, fs_id=FilesystemIdentifier(mountpoint=record.rootfs),
                                           used_bytes=UInt64Value(0), inodes_used=UInt64Value(0)))
        if record.state == "running":
            try:
                answer = await call(self.tasks.stats(hl.TaskRequest(id=record.id)))
            except SkiffError:
                return stats
            raw = json.loads(answer.raw or b"{}")
            stats.cpu = CpuUsage(timestamp=now, usage_core_nano_seconds=UInt64Value(answer.cpu_usage_ns))
            stats.memory = MemoryUsage(timestamp=now, working_set_bytes=UInt64Value(_working_set(raw)),
                                       usage_bytes=UInt64Value(answer.memory_usage))
        return stats

    async def pod(self, sandbox: SandboxRecord) -> PodSandboxStats:
        now = time.time_ns()
        containers = [c for c in self.state.of_sandbox(sandbox.id) if c.state == "running"]
        per = await asyncio.gather(*(self.container(c) for c in containers))
        cpu = sum(s.cpu.usage_core_nano_seconds.value for s in per if s.cpu)
        working = sum(s.memory.working_set_bytes.value for s in per if s.memory)
        pids = 0
        for c in containers:
            try:
                pids += len((await call(self.tasks.list_pids(hl.TaskRequest(id=c.id)))).pids)
            except SkiffError:
                continue
        config = sandbox.config
        return PodSandboxStats(
            attributes=PodSandboxAttributes(id=sandbox.id, metadata=config.metadata, labels=dict(config.labels),
                                            annotations=dict(config.annotations)),
            linux=LinuxPodSandboxStats(
                cpu=CpuUsage(timestamp=now, usage_core_nano_seconds=UInt64Value(cpu)),
                memory=MemoryUsage(timestamp=now, working_set_bytes=UInt64Value(working)),
                process=ProcessUsage(timestamp=now, process_count=UInt64Value(pids)),
                containers=list(per)))
