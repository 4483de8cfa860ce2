"""Our gRPC servers (common/grpc.py ServiceServer) take more than h2's default 100 concurrent streams
on one connection: each running container holds a Tasks.Wait stream from the daemon to highlevel,
and past 100 every further call on the channel waited for one of them to end."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from grpclib.health.service import Health
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest

from services.common import grpc


def test_150_streams_open_at_once_on_one_channel(tmp_path: Path) -> None:
    sock = tmp_path / "s.sock"

    async def scenario() -> None:
        server = grpc.ServiceServer([Health()])
        await server.start(path=str(sock))
        channel = grpc.channel(str(sock))
        stub = HealthStub(channel)
        try:
            async with contextlib.AsyncExitStack() as streams, asyncio.timeout(30):
                for _ in range(150):
                    stream = await streams.enter_async_context(stub.Watch.open())
                    await stream.send_message(HealthCheckRequest(), end=True)
                    assert (await stream.recv_message()) is not None  # open, and held open
                assert (await stub.Check(HealthCheckRequest())).status == 1  # one more call still goes
                channel.close()  # ends the held streams (their exits would wait for the server's end)
        finally:
            channel.close()
            server.close()
            await server.wait_closed()

    asyncio.run(scenario())


def test_closed_streams_remembered_are_bounded(tmp_path: Path) -> None:
    """A call is a stream; h2 remembers closed ones (65,536 a connection by default), which made a
    busy service's memory grow launch after launch. Ours keep at most MAX_CLOSED_STREAMS, each side."""
    sock = tmp_path / "s.sock"
    calls = grpc.H2Connection.MAX_CLOSED_STREAMS + 500

    async def scenario() -> None:
        server = grpc.ServiceServer([Health()])
        await server.start(path=str(sock))
        channel = grpc.channel(str(sock))
        stub = HealthStub(channel)
        try:
            async with asyncio.timeout(120):
                for _ in range(calls):
                    await stub.Check(HealthCheckRequest())
            client_side = channel._protocol.connection._connection._closed_streams  # type: ignore[union-attr]
            assert grpc.H2Connection.MAX_CLOSED_STREAMS <= 4096
            assert len(client_side) == grpc.H2Connection.MAX_CLOSED_STREAMS
        finally:
            channel.close()
            server.close()
            await server.wait_closed()

    asyncio.run(scenario())
