"""skiff soak's account: log lines lost and duplicated, the verdict and what it lets pass, the
report's shape, the failure causes grouped across containers; a garbled answer."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from aiohttp import web

from services.soak.account import Account
from services.soak.client import CallFailed, DockerApi, demux, transient
from services.soak.workloads import script


def lines(tag: str, numbers: list[int]) -> list[str]:
    return [f"{tag} {i}" for i in numbers]


def test_every_line_once_is_clean() -> None:
    a = Account()
    a.expect_lines("c", ["noise", *lines("c", [1, 2, 3])], "c", 3)
    assert (a.lost_lines, a.duplicated_lines) == (0, 0) and a.line_cases == []


def test_lost_and_duplicated_lines_are_counted() -> None:
    a = Account()
    a.expect_lines("c", lines("c", [1, 3, 3, 3]), "c", 4)
    assert (a.lost_lines, a.duplicated_lines) == (2, 2)
    assert a.line_cases == ["c: 2 lost, 2 duplicated of 4 x 1"]
    assert any("log lines" in why for why in a.verdict())


def test_copies_after_restarts() -> None:
    a = Account()
    a.expect_lines("r", lines("r", [1, 2]) * 3, "r", 2, copies=3)
    assert (a.lost_lines, a.duplicated_lines) == (0, 0)
    a.expect_lines("r", lines("r", [1, 2]) * 2, "r", 2, copies=3)
    assert a.lost_lines == 2


def test_a_killed_process_may_stop_early_but_not_skip() -> None:
    a = Account()
    a.expect_lines("k", lines("k", [1, 2, 3]), "k", 10, cut_short=True)
    assert a.lost_lines == 0
    a.expect_lines("k", lines("k", [1, 3]), "k", 10, cut_short=True)
    assert a.lost_lines == 1


def test_the_verdict() -> None:
    a = Account()
    assert a.verdict() == ["no launch succeeded"]
    a.launch_tried()
    a.launch_ok(0.1)
    a.launch_tried()
    a.launch_failed("POST /containers/{id}/start: 500 daemon unavailable")
    assert a.verdict() == []  # a failed launch alone does not fail the run
    a.leaks["mounts"] = []
    assert a.verdict() == []
    a.leaks["mounts"] = ["/x/run/skiff/highlevel/t/abc/rootfs"]
    a.lost.append("soak-1: gone")
    a.wrong_exit.append("soak-2: exit code 137, expected 3")
    a.timings.hangs["POST /containers/{id}/wait"] += 1
    why = a.verdict()
    assert "1 lost containers" in why and "1 wrong exit codes" in why
    assert "1 calls without an answer in time" in why and "1 leaks (mounts)" in why
    report = json.loads(json.dumps(a.to_json()))
    assert report["launches"] == {"tried": 2, "succeeded": 1, "failed": 1,
                                  "failed_by_cause": {"POST /containers/{id}/start: 500 daemon unavailable": 1}}
    assert report["lost"]["count"] == 1 and report["leaks"]["mounts"] and report["verdict"] == why
    assert "FAIL" in a.render()


def test_causes_group_across_containers() -> None:
    one = CallFailed("POST /containers/{id}/start", 500, "container " + "a" * 64 + " soak-ab12-7: no shim")
    two = CallFailed("POST /containers/{id}/start", 500, "container " + "b" * 64 + " soak-ab12-9: no shim")
    assert one.cause == two.cause == "POST /containers/{id}/start: 500 container <id> <name>: no shim"
    assert CallFailed("GET /x", None, "ClientOSError").cause == "GET /x: no answer ClientOSError"


def test_demux_and_the_script() -> None:
    framed = bytes([1, 0, 0, 0, 0, 0, 0, 4]) + b"a 1\n" + bytes([2, 0, 0, 0, 0, 0, 0, 2]) + b"e\n" + \
        bytes([1, 0, 0, 0, 0, 0, 0, 4]) + b"a 2\n"
    assert demux(framed) == (["a 1", "a 2"], ["e"])
    assert script("t", 3, 5, 0.2).endswith("sleep 0.2; exit 5")
    assert script("t", 3, 5, 0.2, wait_for_term=True).startswith("trap 'exit 5' TERM;")


def test_a_garbled_answer_fails_the_call_and_the_run(tmp_path: Path) -> None:
    """Found by the soak (a daemon restarted on newer code than its apiserver's answered the list lane
    in a form the apiserver passed on as the list): a 200 whose body is not JSON crashed the tool
    (exit 2, the engine's mounts left to the teardown). It is a failed call and a failed run."""

    async def main() -> tuple[Account, CallFailed]:
        async def garbled(request: web.Request) -> web.Response:
            return web.Response(body=b"12\x1e[{}]", content_type="application/json")

        app = web.Application()
        app.router.add_get("/v1.41/containers/json", garbled)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.UnixSite(runner, str(tmp_path / "api.sock")).start()
        account = Account()
        api = DockerApi(str(tmp_path / "api.sock"), account.timings, timeout=10)
        try:
            with pytest.raises(CallFailed) as failed:
                await api.call("GET /containers/json", "GET", "/containers/json")
        finally:
            await api.close()
            await runner.cleanup()
        return account, failed.value

    account, failed = asyncio.run(main())
    assert failed.garbled and failed.status == 200 and not transient(failed)
    assert account.verdict() == ["1 garbled answers", "no launch succeeded"]
    assert account.to_json()["garbled_answers"]["count"] == 1
