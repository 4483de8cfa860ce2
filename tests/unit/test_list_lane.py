"""The list lane between apiserver and daemon (common/list_lane.py): the daemon's answer byte for
byte, the request as sent, and None (the caller then asks gRPC) for a failure or no socket."""

from __future__ import annotations

import asyncio
from pathlib import Path

from services.apiserver import list_lane as client
from services.common.list_lane import lane_path
from services.daemon.list_lane import ListLane
from services.gen.skiff.daemon.v1 import ListFilters, ListRequest


def test_answers_errors_and_no_socket(tmp_path: Path) -> None:
    daemon_socket = tmp_path / "daemon.sock"
    seen: list[ListRequest] = []

    def render(request: ListRequest) -> bytes:
        seen.append(request)
        if request.limit == 13:
            raise ValueError("unlucky")
        return b'[{"Id":"' + b"x" * 100_000 + b'"}]'

    async def scenario() -> None:
        assert await client.ask(daemon_socket, ListRequest()) is None  # no lane yet: gRPC's turn
        lane = ListLane(render)
        await lane.start(daemon_socket)
        try:
            request = ListRequest(all=True, limit=2, filters=ListFilters(name=["a"], label=["k=v"]))
            answers = await asyncio.gather(*(client.ask(daemon_socket, request) for _ in range(6)))
            assert all(a == render(request) for a in answers)
            assert seen[0] == request
            assert await client.ask(daemon_socket, ListRequest(limit=13)) is None
            assert await client.ask(daemon_socket, ListRequest()) == render(ListRequest())  # still serving
        finally:
            await lane.close()
        assert not lane_path(daemon_socket).exists()
        assert await client.ask(daemon_socket, ListRequest()) is None  # kept connections found closed

    asyncio.run(scenario())
