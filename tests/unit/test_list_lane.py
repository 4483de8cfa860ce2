"""The list lane between apiserver and daemon (common/list_lane.py): the daemon's rows rendered as the
daemon renders them, the request as sent, None (the caller then asks gRPC) for a failure or no socket,
and a kept list answered without asking again until the daemon's generation moves or it goes."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from services.apiserver import list_lane as client
from services.common.list_generation import Generation, generation_path
from services.common.list_lane import lane_path
from services.daemon.list_lane import ListLane
from services.dockermodel.list_rows import Row, render_rows
from services.gen.skiff.daemon.v1 import ListFilters, ListRequest

ROWS: list[Row] = [('{"Id":"' + "x" * 100_000 + '","State":"running","Status":', "Up ", time.time() - 5, "", "}"),
                   ('{"Id":"y","State":"created","Status":', "Created", None, "", ',"Labels":{"a":"\\u001f"}}')]


def test_answers_errors_and_no_socket(tmp_path: Path) -> None:
    daemon_socket = tmp_path / "daemon.sock"
    seen: list[ListRequest] = []

    def rows(request: ListRequest) -> list[Row]:
        seen.append(request)
        if request.limit == 13:
            raise ValueError("unlucky")
        return ROWS

    async def scenario() -> None:
        assert await client.answer(daemon_socket, "k", ListRequest) is None  # no lane yet: gRPC's turn
        generation = Generation(generation_path(daemon_socket))
        lane = ListLane(rows, generation)
        await lane.start(daemon_socket)
        try:
            request = ListRequest(all=True, limit=2, filters=ListFilters(name=["a"], label=["k=v"]))
            answers = await asyncio.gather(*(client.answer(daemon_socket, "a", lambda: request) for _ in range(6)))
            assert all(a == render_rows(ROWS, time.time())[0] for a in answers)
            assert seen[0] == request
            assert await client.answer(daemon_socket, "b", lambda: ListRequest(limit=13)) is None
            asked = len(seen)
            assert await client.answer(daemon_socket, "c", ListRequest) == render_rows(ROWS, time.time())[0]
            assert len(seen) == asked + 1  # still serving

            # Kept: answered again with no call while the generation stands, asked again once it moves.
            assert await client.answer(daemon_socket, "c", ListRequest) == render_rows(ROWS, time.time())[0]
            assert len(seen) == asked + 1
            generation.bump()
            await client.answer(daemon_socket, "c", ListRequest)
            assert len(seen) == asked + 2
        finally:
            await lane.close()
            generation.close()
        assert not lane_path(daemon_socket).exists()
        # The daemon gone: nothing kept is answered, the kept connections are found closed.
        assert await client.answer(daemon_socket, "c", ListRequest) is None

    asyncio.run(scenario())
