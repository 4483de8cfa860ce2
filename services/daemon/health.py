"""Health checks (Docker's HEALTHCHECK): one monitor per running container with a probe, as dockerd's.

A monitor starts with the container (its health reset to "starting", the log kept), stops when it
exits or is paused (the health then reads "unhealthy", as dockerd's) and starts again on unpause. Each
probe is an exec of the container (the path of ``docker exec``, so its exec_create/exec_start/exec_die
events too), run as the container's user in its working folder, killed after the timeout; its record
goes once it ended, as nobody inspects it. The last 5 results, the failing streak and the status are in
the record's ``State.Health``; a change of status is an event ("health_status: healthy") and is saved,
so a daemon restart re-arms the monitors of running containers with the status they had.

Timing as dockerd's: the first probe one interval after the start, the next one interval after a
probe ended; during the start period, until the first success, probes come every start interval and
failures do not count.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time

import structlog

from services.common.errors import SkiffError
from services.common.grpc import call, client_errors
from services.daemon.containers import ContainerManager
from services.daemon.exec import ExecManager
from services.daemon.records import Entry, now_rfc3339
from services.dockermodel.health import HEALTH_NAMES
from services.dockermodel.times import parse_time
from services.gen.skiff import highlevel
from services.gen.skiff.daemon.v1 import (
    ExecCreateRequest,
    Health,
    HealthcheckResult,
    HealthConfig,
    HealthStatus,
    State,
)

hl = highlevel.v1
log = structlog.get_logger(service="daemon")

DEFAULT_INTERVAL = 30_000_000_000
DEFAULT_TIMEOUT = 30_000_000_000
DEFAULT_START_PERIOD = 0
DEFAULT_START_INTERVAL = 5_000_000_000
DEFAULT_RETRIES = 3
MAX_LOG_ENTRIES = 5
MAX_OUTPUT = 4096
SHELL = ("/bin/sh", "-c")
# How long a timed-out (killed) probe may take to be reported gone before the monitor carries on.
KILL_WAIT = 10.0
# Starting the exec may be slow on a busy host; that time is not the probe's (dockerd bounds it apart).
START_TIMEOUT = 30.0


class ProbeTimedOut(Exception):
    """The probe's process ran past its timeout."""


def probe_command(config: HealthConfig, shell: list[str] | None = None) -> list[str] | None:
    """The probe's argv, or None when the container has no probe (no test, "NONE", an unknown kind);
    CMD-SHELL runs under the image's SHELL when it has one, as dockerd's getShell."""
    if not config.test:
        return None
    kind, rest = config.test[0], list(config.test[1:])
    if kind == "CMD":
        return rest
    if kind == "CMD-SHELL":
        return [*(shell or SHELL), *rest]
    if kind != "NONE":
        log.warning("unknown healthcheck type, no probe", kind=kind)
    return None


def go_duration(ns: int) -> str:
    """A duration as Go's time.Duration prints it ("30s", "1.5s", "1m30s", "500ms"): dockerd's messages."""
    if ns == 0:
        return "0s"
    sign, ns = ("-" if ns < 0 else ""), abs(ns)

    def number(value: int, unit: int) -> str:
        whole, frac = divmod(value, unit)
        digits = str(frac).rjust(len(str(unit)) - 1, "0").rstrip("0")
        return f"{whole}.{digits}" if digits else str(whole)

    if ns < 1_000_000_000:
        for unit, name in ((1_000_000, "ms"), (1_000, "µs"), (1, "ns")):
            if ns >= unit:
                return sign + number(ns, unit) + name
    hours, rest = divmod(ns, 3_600_000_000_000)
    minutes, rest = divmod(rest, 60_000_000_000)
    text = (f"{hours}h" if hours else "") + (f"{minutes}m" if hours or minutes else "")
    return sign + text + number(rest, 1_000_000_000) + "s"


class LimitedOutput:
    """A probe's stdout and stderr, up to MAX_OUTPUT bytes; "..." says more was dropped."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.truncated = False

    def write(self, chunk: bytes) -> None:
        room = MAX_OUTPUT - len(self.data)
        self.data += chunk[:max(room, 0)]
        self.truncated = self.truncated or len(chunk) > room

    def text(self) -> str:
        return self.data.decode(errors="replace") + ("..." if self.truncated else "")


class HealthMonitors:
    """The monitors of every container, fed the container events (``on_event``: server.build_daemon
    subscribes it); ``restore`` once the containers are reconciled with their tasks at daemon start."""

    def __init__(self, containers: ContainerManager, execs: ExecManager) -> None:
        self.containers = containers
        self.execs = execs
        self.monitors: dict[str, asyncio.Task[None]] = {}
        # Each container's health, kept here too: a start replaces the record's state, the log carries on.
        self.kept: dict[str, Health] = {}
        self.background: set[asyncio.Task[None]] = set()

    # ---- lifecycle ----

    def on_event(self, action: str, entry: Entry, attrs: dict[str, str]) -> None:
        if action == "start":
            self._init(entry)
        elif action in ("die", "pause"):
            self._stop(entry.record.id)
        elif action == "unpause":
            self._arm(entry)
        elif action == "destroy":
            self._stop(entry.record.id)
            self.kept.pop(entry.record.id, None)

    async def restore(self) -> None:
        """At daemon start, once the records are in: running containers' monitors carry on with the
        status saved in their record; anything else with a health state reads "unhealthy"."""
        for entry in self.containers.records.entries.values():
            record = entry.record
            if probe_command(record.config.healthcheck) is None:
                continue
            health = record.state.health
            if record.state.status == State.RUNNING:
                if health.status == HealthStatus.UNSPECIFIED:
                    health.status = HealthStatus.STARTING  # started, but killed before its first save
                self.kept[record.id] = health
                self._arm(entry)
            elif health.status != HealthStatus.UNSPECIFIED:
                health.status = HealthStatus.UNHEALTHY
                self.kept[record.id] = health

    def _init(self, entry: Entry) -> None:
        """A start (a first one, a restart, a restart policy's): health "starting", streak 0, log kept."""
        record = entry.record
        if probe_command(record.config.healthcheck) is None:
            return
        self._stop(record.id)
        previous = self.kept.get(record.id)
        health = Health(status=HealthStatus.STARTING, failing_streak=0, log=list(previous.log) if previous else [])
        record.state.health = health
        self.kept[record.id] = health
        self._arm(entry)

    def _arm(self, entry: Entry) -> None:
        record = entry.record
        if record.id in self.monitors or record.state.status != State.RUNNING:
            return
        if probe_command(record.config.healthcheck) is None or record.id not in self.kept:
            return
        record.state.health = self.kept[record.id]
        self.monitors[record.id] = asyncio.ensure_future(self._monitor(entry))

    def _stop(self, container_id: str) -> None:
        """The monitor goes (a probe under way is killed); the health reads "unhealthy" as dockerd's."""
        task = self.monitors.pop(container_id, None)
        if task is None:
            return
        task.cancel()
        health = self.kept.get(container_id)
        if health is not None:
            health.status = HealthStatus.UNHEALTHY

    async def close(self) -> None:
        for container_id in list(self.monitors):
            self.monitors.pop(container_id).cancel()
        for task in list(self.background):
            task.cancel()

    def _spawn(self, coro: object) -> None:
        task = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    # ---- the monitor ----

    async def _monitor(self, entry: Entry) -> None:
        container_id = entry.record.id
        try:
            while True:
                await asyncio.sleep(self._interval(entry) / 1e9)
                if entry.removed or entry.record.state.status != State.RUNNING:
                    break
                result = await self._probe(entry)
                if self.monitors.get(container_id) is not asyncio.current_task():
                    return  # stopped while probing: the result is moot
                await self._record(entry, result)
        except SkiffError as exc:
            log.warning("health monitor failed", id=container_id, error=exc.message)
        # Ended by itself (the container is gone or no longer runs, unseen by an event): as a stop.
        if self.monitors.get(container_id) is asyncio.current_task():
            self._stop(container_id)

    def _interval(self, entry: Entry) -> int:
        """dockerd's getInterval: the start interval while starting within the start period."""
        config = entry.record.config.healthcheck
        interval = config.interval or DEFAULT_INTERVAL
        start_period = config.start_period or DEFAULT_START_PERIOD
        since_start = time.time() - parse_time(entry.record.state.started_at)
        if since_start * 1e9 >= start_period or entry.record.state.health.status != HealthStatus.STARTING:
            return interval
        return config.start_interval or DEFAULT_START_INTERVAL

    async def _record(self, entry: Entry, result: HealthcheckResult) -> None:
        """dockerd's handleProbeResult: the log, the streak, the status; an event and a save on a change."""
        record = entry.record
        config = record.config.healthcheck
        health = record.state.health
        old = health.status
        health.log = [*health.log, result][-MAX_LOG_ENTRIES:]
        if result.exit_code == 0:
            health.failing_streak = 0
            health.status = HealthStatus.HEALTHY
        else:
            start_period = (config.start_period or DEFAULT_START_PERIOD) / 1e9
            in_start_period = parse_time(result.start) - parse_time(record.state.started_at) < start_period
            if not (old == HealthStatus.STARTING and in_start_period):
                health.failing_streak += 1
                if health.failing_streak >= (config.retries if config.retries > 0 else DEFAULT_RETRIES):
                    health.status = HealthStatus.UNHEALTHY
        if health.status != old:
            self.containers.emit(f"health_status: {HEALTH_NAMES[health.status]}", entry)
            # Under the container's lock: an exit's save (made under it too) is never overtaken by this one.
            async with entry.lock:
                if record.state.status == State.RUNNING and not entry.removed:
                    await self.containers.save(record)

    # ---- one probe ----

    async def _probe(self, entry: Entry) -> HealthcheckResult:
        """Runs the probe as an exec; any failure to run it is a result (exit -1 and the error), as dockerd's."""
        start = now_rfc3339()
        record = entry.record
        shell = (await self.containers.image_config(record)).get("Shell")
        command = probe_command(record.config.healthcheck, shell if isinstance(shell, list) else None) or []
        timeout = record.config.healthcheck.timeout or DEFAULT_TIMEOUT
        output = LimitedOutput()
        exec_id = ""
        finished = False
        try:
            exec_id = await self.execs.create(ExecCreateRequest(
                container=record.id, cmd=command, attach_stdout=True, attach_stderr=True))
            try:
                code = await self._run(exec_id, output, timeout / 1e9)
            except ProbeTimedOut:
                await self._kill(record.id, exec_id)
                finished = True
                text = output.text()
                message = f"Health check exceeded timeout ({go_duration(timeout)})" + (f": {text}" if text else "")
                return HealthcheckResult(start=start, end=now_rfc3339(), exit_code=-1, output=message)
            finished = True
            return HealthcheckResult(start=start, end=now_rfc3339(), exit_code=code, output=output.text())
        except SkiffError as exc:
            if exec_id:
                await self._kill(record.id, exec_id)  # a start that timed out may yet have started it
            finished = True
            return HealthcheckResult(start=start, end=now_rfc3339(), exit_code=-1, output=exc.message)
        finally:
            if exec_id:
                if finished:
                    self.execs.forget(exec_id)
                else:
                    # Cancelled mid-probe (the container stops or pauses): the probe goes in the background.
                    self._spawn(self._kill_and_forget(record.id, exec_id))

    async def _run(self, exec_id: str, output: LimitedOutput, timeout: float) -> int:
        """The exec started (within START_TIMEOUT), then its output and exit within ``timeout``: the
        probe's clock starts once its process runs, as dockerd's."""
        stream = self.execs.start(exec_id, detach=False)
        try:
            try:
                async with asyncio.timeout(START_TIMEOUT):
                    while not (out := await anext(stream)).running:
                        if out.eof:
                            return out.exit_code
                        output.write(out.data)
            except TimeoutError:
                raise SkiffError(f"timed out starting health check (exec {exec_id})") from None
            try:
                async with asyncio.timeout(timeout):
                    while not (out := await anext(stream)).eof:
                        output.write(out.data)
                    return out.exit_code
            except TimeoutError:
                raise ProbeTimedOut() from None
        except StopAsyncIteration:
            raise SkiffError("health check exec ended without an exit code") from None
        finally:
            await stream.aclose()  # type: ignore[attr-defined]

    async def _kill(self, container_id: str, exec_id: str) -> None:
        """SIGKILL to the probe, then its end awaited (bounded): dying probes do not pile up."""
        try:
            record = self.execs.get(exec_id)
        except SkiffError:
            return
        if record.exit_code is not None:
            return  # it ended already
        task_exec_id = record.task_exec_id
        with contextlib.suppress(SkiffError):
            await call(self.containers.tasks.kill(hl.KillRequest(id=container_id, exec_id=task_exec_id,
                                                                 signal=signal.SIGKILL)))
        with contextlib.suppress(SkiffError, TimeoutError):
            async with asyncio.timeout(KILL_WAIT):
                with client_errors():
                    async for message in self.containers.tasks.wait(hl.WaitRequest(id=container_id,
                                                                                   exec_id=task_exec_id)):
                        if message.exited:
                            break

    async def _kill_and_forget(self, container_id: str, exec_id: str) -> None:
        await self._kill(container_id, exec_id)
        self.execs.forget(exec_id)
