"""The workloads: each launch is one container that prints ``<tag> 1`` .. ``<tag> N`` and exits with
a code chosen here, then is checked (exit code, state, log lines) and removed.

- ``run``: create, start, wait, logs, inspect, remove (``docker run`` without ``--rm``);
- ``lifecycle``: run detached, logs until all lines are there, an exec, stop (the shell's TERM trap
  exits with the chosen code), inspect, remove;
- ``mixed``: the two, plus an ``on-failure:2`` restart policy (three runs, three copies of the lines)
  and auto-removal (``--rm``), the non-zero codes on purpose.

A fault the tool made itself (a process SIGKILLed) is in ``Launches.killed``: that container may
then report 137 and stop early. Launch calls are not retried; checking calls ride out an engine
restart (``persist``); the removal is persisted too, so the engine is left as found.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field

from services.soak.account import Account
from services.soak.client import CallFailed, DockerApi, demux, persist

LABEL = "org.skiff.soak"
WORKLOADS = ("run", "lifecycle", "mixed")
KILLED_CODE = 137


@dataclass(slots=True)
class Settings:
    image: str
    network: str | None
    lines: int = 20
    hold: float = 0.3  # seconds a container lives after its lines: a window for the kill faults
    check_deadline: float = 90.0  # a checking call retried across restarts at most this long


@dataclass(slots=True)
class Launches:
    """The containers this run made: the injector picks its victims here, the sweep removes them."""

    run_id: str
    live: dict[str, str] = field(default_factory=dict)  # id -> name, from create to removal
    killed: set[str] = field(default_factory=set)  # ids a fault SIGKILLed (container or shim)


def script(tag: str, count: int, code: int, hold: float, *, wait_for_term: bool = False) -> str:
    lines = f'i=1; while [ $i -le {count} ]; do echo "{tag} $i"; i=$((i+1)); done'
    if wait_for_term:
        return f"trap 'exit {code}' TERM; {lines}; while :; do sleep 0.1; done"
    return f"{lines}; sleep {hold}; exit {code}"


class Workload:
    def __init__(self, api: DockerApi, account: Account, settings: Settings, launches: Launches, kind: str) -> None:
        self.api = api
        self.account = account
        self.settings = settings
        self.launches = launches
        self.kind = kind
        self._rng = random.Random()

    async def launch(self, n: int) -> bool:
        """One launch and its checks; whether the launch itself succeeded."""
        kind = self.kind
        if kind == "mixed":
            kind = ("run", "lifecycle", "restart", "autoremove")[n % 4]
        name = f"soak-{self.launches.run_id}-{n}"
        code = 0 if kind == "lifecycle" and n % 2 else self._rng.randrange(1 if kind == "restart" else 0, 100)
        before = self.account.succeeded
        await getattr(self, f"_{kind}")(name, code)
        return self.account.succeeded > before

    # ---- the pieces ---------------------------------------------------------------------------

    def _body(self, name: str, cmd: str, **host: object) -> dict[str, object]:
        host_config: dict[str, object] = dict(host)
        if self.settings.network:
            host_config["NetworkMode"] = self.settings.network
        return {"Image": self.settings.image, "Cmd": ["sh", "-c", cmd], "Labels": {LABEL: self.launches.run_id},
                "HostConfig": host_config}

    async def _create_and_start(self, name: str, body: dict[str, object]) -> str | None:
        """The launch: create then start, neither retried. The id, or None when it failed."""
        self.account.launch_tried()
        started = time.monotonic()
        try:
            created = await self.api.call("POST /containers/create", "POST", "/containers/create",
                                          params={"name": name}, body=body)
        except CallFailed as exc:
            self.account.launch_failed(exc.cause)
            return None
        cid = str(created["Id"])
        self.launches.live[cid] = name
        try:
            await self.api.call("POST /containers/{id}/start", "POST", f"/containers/{cid}/start")
        except CallFailed as exc:
            self.account.launch_failed(exc.cause)
            await self._remove(cid, name)
            return None
        self.account.launch_ok(time.monotonic() - started)
        return cid

    def _deadline(self) -> float:
        return time.monotonic() + self.settings.check_deadline

    async def _checked(self, route: str, method: str, path: str, name: str, **kw: object) -> object:
        """A checking call, persisted across restarts; a 404 means the engine lost the container."""
        try:
            return await persist(lambda: self.api.call(route, method, path, **kw), self._deadline())  # type: ignore[arg-type]
        except CallFailed as exc:
            if exc.status == 404:
                raise Lost(f"{name}: {exc.route} answered 404 {exc.message}") from None
            raise

    async def _inspect(self, cid: str, name: str) -> dict[str, object]:
        found = await self._checked("GET /containers/{id}/json", "GET", f"/containers/{cid}/json", name)
        assert isinstance(found, dict)
        return found

    async def _logs(self, cid: str, name: str) -> list[str]:
        raw = await self._checked("GET /containers/{id}/logs", "GET", f"/containers/{cid}/logs", name,
                                  params={"stdout": "1", "stderr": "1"}, raw=True)
        assert isinstance(raw, bytes)
        return demux(raw)[0]

    def _expect_exit(self, cid: str, name: str, code: int, got: object, what: str = "exit code") -> None:
        allowed = {code, KILLED_CODE} if cid in self.launches.killed else {code}
        if got not in allowed:
            self.account.wrong_exit.append(f"{name}: {what} {got}, expected {' or '.join(map(str, sorted(allowed)))}")

    def _expect_state(self, name: str, state: dict[str, object], status: str, **more: object) -> None:
        wrong = {k: state.get(k) for k, v in {"Status": status, **more}.items() if state.get(k) != v}
        if wrong:
            self.account.wrong_state.append(f"{name}: {wrong}, expected {({'Status': status, **more})}")

    async def _remove(self, cid: str, name: str) -> None:
        reached = False  # an attempt whose answer was lost may have removed it: a 404 after it is ours

        async def attempt() -> object:
            nonlocal reached
            try:
                return await self.api.call("DELETE /containers/{id}", "DELETE", f"/containers/{cid}",
                                           params={"force": "1", "v": "1"})
            except CallFailed as exc:
                reached = reached or exc.status is None or exc.status >= 500
                raise

        try:
            await persist(attempt, self._deadline())
        except CallFailed as exc:
            if exc.status != 404:
                self.account.not_removed.append(f"{name}: {exc}")
                return
            if not reached:
                # Nothing of this run removed it: the engine lost it (or it was removed behind our back).
                self.account.lost.append(f"{name}: gone before its removal ({exc.status} {exc.message})")
        self.launches.live.pop(cid, None)

    async def _guarded(self, cid: str, name: str, check: object) -> None:
        """Runs a check; a loss or a check that could not finish is accounted; the container goes."""
        try:
            await check  # type: ignore[misc]
            self.account.checked += 1
        except Lost as exc:
            self.account.lost.append(str(exc))
            self.launches.live.pop(cid, None)
            return
        except CallFailed as exc:
            self.account.wrong_state.append(f"{name}: could not be checked: {exc}")
        await self._remove(cid, name)

    # ---- the workloads ------------------------------------------------------------------------

    async def _run(self, name: str, code: int) -> None:
        s = self.settings
        cid = await self._create_and_start(name, self._body(name, script(name, s.lines, code, s.hold)))
        if cid is not None:
            await self._guarded(cid, name, self._check_run(cid, name, code))

    async def _check_run(self, cid: str, name: str, code: int) -> None:
        waited = await self._checked("POST /containers/{id}/wait", "POST", f"/containers/{cid}/wait", name)
        assert isinstance(waited, dict)
        self._expect_exit(cid, name, code, waited.get("StatusCode"))
        state = (await self._inspect(cid, name))["State"]
        assert isinstance(state, dict)
        self._expect_state(name, state, "exited", Running=False)
        self._expect_exit(cid, name, code, state.get("ExitCode"), "inspect's ExitCode")
        self.account.expect_lines(name, await self._logs(cid, name), name, self.settings.lines,
                                  cut_short=cid in self.launches.killed)

    async def _lifecycle(self, name: str, code: int) -> None:
        s = self.settings
        cid = await self._create_and_start(name, self._body(name, script(name, s.lines, code, s.hold,
                                                                         wait_for_term=True)))
        if cid is not None:
            await self._guarded(cid, name, self._check_lifecycle(cid, name, code))

    async def _check_lifecycle(self, cid: str, name: str, code: int) -> None:
        deadline = self._deadline()
        lines: list[str] = []
        while time.monotonic() < deadline and cid not in self.launches.killed:
            lines = await self._logs(cid, name)
            if f"{name} {self.settings.lines}" in lines:
                break
            await asyncio.sleep(0.1)
        if cid not in self.launches.killed:
            await self._exec(cid, name)
        await self._checked("POST /containers/{id}/stop", "POST", f"/containers/{cid}/stop", name,
                            params={"t": "10"}, timeout=30.0)
        state = (await self._inspect(cid, name))["State"]
        assert isinstance(state, dict)
        self._expect_state(name, state, "exited", Running=False)
        self._expect_exit(cid, name, code, state.get("ExitCode"), "ExitCode after stop")
        self.account.expect_lines(name, await self._logs(cid, name), name, self.settings.lines,
                                  cut_short=cid in self.launches.killed)

    async def _exec(self, cid: str, name: str) -> None:
        made = await self._checked("POST /containers/{id}/exec", "POST", f"/containers/{cid}/exec", name,
                                   body={"Cmd": ["sh", "-c", "exit 7"], "AttachStdout": False,
                                         "AttachStderr": False})
        assert isinstance(made, dict)
        exec_id = str(made["Id"])
        await self._checked("POST /exec/{id}/start", "POST", f"/exec/{exec_id}/start", name,
                            body={"Detach": True, "Tty": False})
        deadline = self._deadline()
        while time.monotonic() < deadline:
            found = await self._checked("GET /exec/{id}/json", "GET", f"/exec/{exec_id}/json", name)
            assert isinstance(found, dict)
            if not found.get("Running") and found.get("ExitCode") is not None and found.get("Pid", 1):
                self._expect_exit(cid, name, 7, found.get("ExitCode"), "exec's exit code")
                return
            await asyncio.sleep(0.05)
        self.account.wrong_state.append(f"{name}: exec still running after {self.settings.check_deadline} s")

    async def _restart(self, name: str, code: int) -> None:
        s = self.settings
        body = self._body(name, script(name, s.lines, code, 0.0),
                          RestartPolicy={"Name": "on-failure", "MaximumRetryCount": 2})
        cid = await self._create_and_start(name, body)
        if cid is not None:
            await self._guarded(cid, name, self._check_restart(cid, name, code))

    async def _check_restart(self, cid: str, name: str, code: int) -> None:
        deadline = self._deadline()
        state: dict[str, object] = {}
        found: dict[str, object] = {}
        while time.monotonic() < deadline:
            found = await self._inspect(cid, name)
            state = found["State"]  # type: ignore[assignment]
            if state.get("Status") == "exited" and found.get("RestartCount") == 2:
                break
            await asyncio.sleep(0.1)
        if found.get("RestartCount") != 2 or state.get("Status") != "exited":
            self.account.wrong_state.append(f"{name}: on-failure:2 left Status {state.get('Status')}, "
                                            f"RestartCount {found.get('RestartCount')}")
            return
        self._expect_exit(cid, name, code, state.get("ExitCode"), "ExitCode after 2 restarts")
        self.account.expect_lines(name, await self._logs(cid, name), name, self.settings.lines, copies=3,
                                  cut_short=cid in self.launches.killed)

    async def _autoremove(self, name: str, code: int) -> None:
        s = self.settings
        cid = await self._create_and_start(name, self._body(name, script(name, s.lines, code, s.hold),
                                                            AutoRemove=True))
        if cid is None:
            return
        try:
            waited = await self.api.call("POST /containers/{id}/wait", "POST", f"/containers/{cid}/wait",
                                         params={"condition": "removed"})
            self._expect_exit(cid, name, code, waited.get("StatusCode"))
        except CallFailed:
            pass  # the wait may be cut by a restart or miss the removal: the state below decides
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                await self.api.call("GET /containers/{id}/json", "GET", f"/containers/{cid}/json")
            except CallFailed as exc:
                if exc.status == 404:
                    self.launches.live.pop(cid, None)
                    self.account.checked += 1
                    return
            await asyncio.sleep(0.2)
        self.account.wrong_state.append(f"{name}: --rm container still there 30 s after its wait")
        await self._remove(cid, name)


class Lost(Exception):
    """The engine answered 404 for a container this run made and had not removed."""


async def sweep(api: DockerApi, account: Account, launches: Launches, deadline: float) -> None:
    """After the run: every container with this run's label goes (the ones whose create answer was
    lost never reached ``live``: counted as orphans, not failures)."""
    try:
        listed = await persist(lambda: api.call("GET /containers/json", "GET", "/containers/json", params={
            "all": "1", "filters": f'{{"label":["{LABEL}={launches.run_id}"]}}'}), deadline)
    except CallFailed as exc:  # the account says why; what this run still holds is not known removed
        account.not_removed.extend(f"{name}: the sweep's list failed: {exc}" for name in launches.live.values())
        launches.live.clear()
        return
    for entry in listed or []:
        cid = str(entry["Id"])
        if cid not in launches.live:
            account.orphans_removed += 1
        try:
            await persist(lambda c=cid: api.call("DELETE /containers/{id}", "DELETE", f"/containers/{c}",
                                                 params={"force": "1", "v": "1"}), deadline)
        except CallFailed as exc:
            if exc.status != 404:
                account.not_removed.append(f"{cid[:12]}: {exc}")
        launches.live.pop(cid, None)
    for name in launches.live.values():
        account.lost.append(f"{name}: gone from the engine's list, never removed by this run")
    launches.live.clear()
