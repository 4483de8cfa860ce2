"""The daemon's composition root: build_daemon serves every service of the daemon's contract once,
and the parts it builds share one container table (nothing reaches it through another part)."""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path

from grpclib.client import Channel

from services.common.config import Config
from services.daemon.server import build_daemon
from services.gen.skiff.daemon import v1 as contract


def test_every_daemon_service_is_served_once_over_one_table(tmp_path: Path) -> None:
    async def body() -> None:
        config = Config.load(str(tmp_path))
        channel = Channel(path=str(tmp_path / "nothing.sock"))  # never dialled: nothing is loaded
        try:
            daemon = build_daemon(config, channel)
        finally:
            channel.close()
        bases = {name for name, cls in inspect.getmembers(contract, inspect.isclass)
                 if name.endswith("Base") and cls.__module__ == contract.__name__}
        served = [base.__name__ for service in daemon.services for base in type(service).__mro__
                  if base.__name__ in bases]
        assert sorted(served) == sorted(bases)
        assert daemon.network.containers is daemon.records
        assert daemon.containers.records is daemon.records
        assert daemon.execs.containers is daemon.containers
        assert daemon.records.entries == {}

    asyncio.run(body())
