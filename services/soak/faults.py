"""Fault injection into an engine this tool started: a service SIGKILLed or SIGTERMed and restarted
after a delay (as its supervisor would), a random shim SIGKILLed, a random container's process
SIGKILLed. Every victim container is marked in ``Launches.killed`` *before* the signal, so the
account expects 137 (or its own code, when it had exited already) and allows its lines to stop short.

Faults come round-robin from the list (every kind is exercised), every ``every`` seconds or at
exponentially distributed intervals of that mean (``random``), and never two without a launch that
succeeded between them (a run makes headway however slow the machine).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
from dataclasses import dataclass

from services.soak.account import Account
from services.soak.client import CallFailed, DockerApi
from services.soak.engine import SERVICES, Engine, EngineError
from services.soak.workloads import Launches

RESTART_ATTEMPTS = 3
PROGRESS_WAIT = 60.0  # a fault waits at most this long for a launch to succeed since the last one
KINDS = tuple(f"{verb}-{service}" for verb in ("kill", "term") for service in SERVICES) + (
    "kill-shim", "kill-container")


def parse_faults(text: str) -> list[str]:
    chosen = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in chosen if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown fault {', '.join(unknown)} (known: {', '.join(KINDS)})")
    return chosen


@dataclass(slots=True)
class Injector:
    engine: Engine
    api: DockerApi
    account: Account
    launches: Launches
    kinds: list[str]
    every: float
    at_random: bool = False
    delay: float = 1.0  # a killed service stays down this long before its restart
    _succeeded_at_last: int = -1  # the account's successes when the last fault came (-1: none yet)

    async def run(self, stop: asyncio.Event) -> None:
        rng = random.Random()
        turn = 0
        while not stop.is_set():
            wait = rng.expovariate(1 / self.every) if self.at_random else self.every
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
                return
            await self._progress_since_the_last(stop)
            if stop.is_set():
                return
            kind = self.kinds[turn % len(self.kinds)]
            turn += 1
            await self.inject(kind, rng)

    async def _progress_since_the_last(self, stop: asyncio.Event) -> None:
        """No fault before a launch succeeded since the previous one (at most PROGRESS_WAIT s): on a
        loaded machine launches took longer than the interval, each fault failed all those in
        flight and a faulted --count 200 made no headway for minutes (the CI gate's timeout)."""
        deadline = asyncio.get_running_loop().time() + PROGRESS_WAIT
        while self.account.succeeded <= self._succeeded_at_last and not stop.is_set() \
                and asyncio.get_running_loop().time() < deadline:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)
        self._succeeded_at_last = self.account.succeeded

    async def inject(self, kind: str, rng: random.Random) -> None:
        verb, _, what = kind.partition("-")
        if what in SERVICES:
            await self._service(what, signal.SIGKILL if verb == "kill" else signal.SIGTERM, kind)
        elif what == "shim":
            shims = {cid: pid for cid, pid in self.engine.shim_pids().items() if cid in self.launches.live}
            if not shims:
                self.account.fault(kind, "", "no shim of this run was alive")
                return
            cid = rng.choice(sorted(shims))
            self.launches.killed.add(cid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(shims[cid], signal.SIGKILL)
            self.account.fault(kind, self.launches.live.get(cid, cid[:12]), f"shim pid {shims[cid]}")
        elif what == "container":
            await self._container(kind, rng)

    async def _service(self, service: str, signum: int, kind: str) -> None:
        pid = self.engine.pid_of(service)
        await asyncio.to_thread(self.engine.signal_service, service, signum)
        await asyncio.sleep(self.delay)
        for attempt in range(1, RESTART_ATTEMPTS + 1):  # as systemd's Restart=on-failure would, bounded
            try:
                await asyncio.to_thread(self.engine.restart, service)
                self.account.fault(kind, service, f"pid {pid}, restarted after {self.delay:g} s"
                                   + (f" ({attempt} attempts)" if attempt > 1 else ""))
                return
            except EngineError as exc:
                failure = exc
                await asyncio.sleep(self.delay)
        self.account.fault(kind, service, f"restart failed: {failure}")
        self.account.notes.append(f"{service} could not be restarted after {kind}: {failure}")

    async def _container(self, kind: str, rng: random.Random) -> None:
        for cid in rng.sample(sorted(self.launches.live), min(len(self.launches.live), 5)):
            try:
                found = await self.api.call("GET /containers/{id}/json", "GET", f"/containers/{cid}/json",
                                            timeout=10)
            except CallFailed:
                continue
            pid = int((found.get("State") or {}).get("Pid") or 0)
            if pid <= 0 or not (found.get("State") or {}).get("Running"):
                continue
            if not _in_cgroup_of(pid, cid):
                continue  # it exited since: the pid may be anyone's now
            self.launches.killed.add(cid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            self.account.fault(kind, self.launches.live.get(cid, cid[:12]), f"pid {pid}")
            return
        self.account.fault(kind, "", "no running container of this run")


def _in_cgroup_of(pid: int, cid: str) -> bool:
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            return cid in f.read()
    except OSError:
        return False
