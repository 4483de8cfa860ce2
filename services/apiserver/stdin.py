"""A hijacked connection's input: the bytes the client sends after 101 go to a process's stdin."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from services.common.errors import SkiffError
from services.common.grpc import call
from services.gen.skiff.daemon.v1 import ContainerOpsStub, StdinData

log = structlog.get_logger(service="apiserver")


class StdinParser:
    """aiohttp's payload-parser protocol (what its websocket reader implements), feeding a queue."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self.queue.put_nowait(bytes(data))
        return False, b""

    def feed_eof(self) -> None:
        self.queue.put_nowait(None)


def read_hijacked(request: web.Request) -> StdinParser | None:
    """Takes over the connection's input once the response is hijacked; None when it cannot."""
    protocol = request.protocol
    if protocol is None or not hasattr(protocol, "set_parser"):
        return None
    parser = StdinParser()
    try:
        protocol.set_parser(parser)  # type: ignore[arg-type]
    except AssertionError:
        return None  # a plain (not upgraded) request: its body parser owns the input
    return parser


def pump(request: web.Request, ops: ContainerOpsStub, container: str, exec_id: str,
         close_on_end: bool) -> asyncio.Task[None] | None:
    """Forwards the client's input to the process until the client closes its side."""
    parser = read_hijacked(request)
    if parser is None:
        return None

    async def chunks() -> AsyncIterator[StdinData]:
        yield StdinData(container=container, exec_id=exec_id, close_on_end=close_on_end)
        while True:
            data = await parser.queue.get()
            if data is None:
                return
            yield StdinData(data=data)

    async def run() -> None:
        try:
            await call(ops.stdin(chunks()))
        except SkiffError as exc:
            log.info("stdin ended", container=container, exec_id=exec_id, error=exc.message)

    return asyncio.ensure_future(run())


async def stop(task: asyncio.Task[None] | None) -> None:
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
