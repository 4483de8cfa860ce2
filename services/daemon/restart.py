"""Restart policies applied when a container's task exits: Docker's rules and back-off.

Back-off (moby restartmanager): 100 ms, doubled on each restart, reset once a run lasted 10 s.
A container stopped or killed through the API (stopped_by_user) is never restarted.
"""

from __future__ import annotations

import asyncio
import time

import structlog

from services.common.errors import SkiffError
from services.daemon.containers import ContainerManager
from services.daemon.records import Entry, now_rfc3339
from services.gen.skiff.daemon.v1 import State

log = structlog.get_logger(service="daemon")
FIRST_DELAY = 0.1
MAX_DELAY = 60.0
RESET_AFTER = 10.0
POLICIES = ("", "no", "on-failure", "always", "unless-stopped")


class RestartPolicies:
    def __init__(self, containers: ContainerManager) -> None:
        self.containers = containers
        self.delays: dict[str, float] = {}
        self.started_mono: dict[str, float] = {}
        self.pending: dict[str, asyncio.Task[None]] = {}

    def on_event(self, action: str, entry: Entry, attrs: dict[str, str]) -> None:
        if action == "start":
            self.started_mono[entry.record.id] = time.monotonic()
        elif action == "die":
            self._on_die(entry)
        elif action in ("stop", "kill", "destroy"):
            task = self.pending.pop(entry.record.id, None)
            if task is not None:
                task.cancel()
            if action == "destroy":  # the container is gone: so is what its back-off was reckoned from
                self.started_mono.pop(entry.record.id, None)
                self.delays.pop(entry.record.id, None)

    def should_restart(self, entry: Entry) -> bool:
        record = entry.record
        host = record.config.host
        policy = host.restart_policy
        if entry.removed or record.stopped_by_user or policy in ("", "no"):
            return False
        if policy == "on-failure":
            if record.state.exit_code == 0:
                return False
            return host.restart_max_retries <= 0 or record.restart_count < host.restart_max_retries
        return policy in ("always", "unless-stopped")

    def _on_die(self, entry: Entry) -> None:
        if not self.should_restart(entry):
            return
        container_id = entry.record.id
        ran = time.monotonic() - self.started_mono.get(container_id, time.monotonic())
        delay = FIRST_DELAY if ran >= RESET_AFTER else self.delays.get(container_id, FIRST_DELAY / 2) * 2
        delay = min(delay, MAX_DELAY)
        self.delays[container_id] = delay
        # Docker shows the back-off: State.Status "restarting", Restarting true (not persisted: a reload
        # finds the record exited and applies the policy again).
        entry.record.state.status = State.RESTARTING
        entry.notify()
        task = asyncio.ensure_future(self._restart_later(entry, delay))
        self.pending[container_id] = task
        task.add_done_callback(lambda _: self.pending.pop(container_id, None)
                               if self.pending.get(container_id) is task else None)

    async def _restart_later(self, entry: Entry, delay: float) -> None:
        await asyncio.sleep(delay)
        if entry.record.state.status != State.RESTARTING:
            return  # stopped, killed or started meanwhile
        if not self.should_restart(entry):
            entry.record.state.status = State.EXITED
            entry.notify()
            return
        # From here the restart is a start like any other: a stop, kill or removal now waits for
        # the container's lock and acts on the started container. Cancelled mid-start, it would
        # leave what start had made (a network namespace made in a thread) without its owner.
        if self.pending.get(entry.record.id) is asyncio.current_task():
            self.pending.pop(entry.record.id)
        entry.record.restart_count += 1
        try:
            await self.containers.start(entry.record.id)
        except SkiffError as exc:
            log.warning("restart failed", id=entry.record.id, error=exc.message)
            if entry.record.state.status == State.RESTARTING:
                entry.record.state.status = State.EXITED
                entry.notify()
            entry.record.state.error = exc.message
            entry.record.state.finished_at = now_rfc3339()
            return
        self.containers.emit("restart", entry, {})

    def close(self) -> None:
        for task in self.pending.values():
            task.cancel()
