"""skiff soak's manners after a failed launch: no launch is sent until the engine answers again, one
probe for all the launchers (found by the faulted CI gate: 20 launchers spent their 700 attempts on
outages before 200 launches succeeded, on a loaded machine)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from aiohttp import web

from services.soak.account import Account
from services.soak.cli import Attempts, Backoff
from services.soak.client import DockerApi, Timings


def test_launches_wait_for_the_engine_to_answer_again(tmp_path: Path) -> None:
    async def main() -> tuple[list[float], float, float]:
        probes: list[float] = []
        back_at = time.monotonic() + 0.8  # the "service" is down until then

        async def info(request: web.Request) -> web.Response:
            probes.append(time.monotonic())
            if time.monotonic() < back_at:
                return web.json_response({"message": "gRPC peer: Connection refused"}, status=503)
            return web.json_response({})

        app = web.Application()
        app.router.add_get("/v1.41/info", info)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.UnixSite(runner, str(tmp_path / "api.sock")).start()
        api = DockerApi(str(tmp_path / "api.sock"), Timings(), timeout=5)
        backoff = Backoff(api)
        try:
            await backoff.before()  # up at first: no wait
            await asyncio.gather(*(backoff.after(False) for _ in range(20)))  # 20 launchers fail at once
            assert not backoff.up.is_set()
            waiters = [asyncio.create_task(backoff.before()) for _ in range(20)]
            await asyncio.wait_for(asyncio.gather(*waiters), 10)
            resumed = time.monotonic()
        finally:
            await api.close()
            await runner.cleanup()
        return probes, resumed, back_at

    probes, resumed, back_at = asyncio.run(main())
    assert resumed >= back_at  # nobody launched while the engine was down
    assert len(probes) < 10  # one prober backing off, not 20 launchers hammering


def test_each_fault_allows_the_launches_it_may_fail() -> None:
    """The attempt bound of --count grows by the launches in flight for every fault injected."""
    account = Account()
    attempts = Attempts(account, total=2, in_flight=20)
    numbers = [attempts.next(0) for _ in range(106)]
    assert numbers == [*range(1, 107)] and attempts.next(0) is None  # 3 x 2 + 100
    assert account.notes == ["stopped after 106 attempts"]
    account.fault("kill-daemon", "daemon")
    assert [attempts.next(0) for _ in range(21)] == [*range(107, 127), None]
    account.launch_ok(0.1)
    assert attempts.next(1) is None  # one succeeded, one under way: the total of 2 is reached
    assert Attempts(Account(), None, 10).next(0) == 1  # --duration: no bound


def test_no_fault_before_a_launch_succeeded_since_the_last() -> None:
    """On a loaded machine launches outlasted the fault interval: each fault failed every launch in
    flight and the CI gate made no headway for minutes. A fault now waits for one success since
    the previous fault."""
    from services.soak.faults import Injector
    from services.soak.workloads import Launches

    async def main() -> float:
        account = Account()
        injector = Injector(None, None, account, Launches("t"), ["kill-daemon"], 0.0)  # type: ignore[arg-type]
        stop = asyncio.Event()
        started = time.monotonic()
        await injector._progress_since_the_last(stop)  # the first fault: no wait
        assert time.monotonic() - started < 0.5

        async def a_launch_later() -> None:
            await asyncio.sleep(0.4)
            account.launch_ok(0.1)

        later = asyncio.create_task(a_launch_later())
        started = time.monotonic()
        await injector._progress_since_the_last(stop)
        await later
        return time.monotonic() - started

    assert 0.4 <= asyncio.run(main()) < 5
