"""kubelet's port-forward protocol over SPDY (``portforward.k8s.io``).

For every connection it forwards, the client opens two streams with the same ``requestID`` and
``port`` headers: ``streamType: error`` (it half-closes it at once; we write a failure's text on it)
and ``streamType: data`` (the connection's bytes both ways). Each pair is one TCP connection to
that port inside the pod's network namespace (``StreamRuntime.dial``); a half-close on either side
is passed on. The session lasts until the client closes it; its pairs end with it.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

import structlog
from aiohttp import web

from services.common.errors import SkiffError
from services.cri.streaming.api import StreamRuntime
from services.cri.streaming.spdy import Stream
from services.cri.streaming.upgrade import upgrade

log = structlog.get_logger(service="cri")

PROTOCOL = "portforward.k8s.io"
READ_SIZE = 32 * 1024


@dataclass(slots=True)
class _Pair:
    error: Stream | None = None
    data: Stream | None = None
    started: bool = False


@dataclass(slots=True)
class _Forwarder:
    pod_id: str
    runtime: StreamRuntime
    pairs: dict[str, _Pair] = field(default_factory=dict)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def add(self, stream: Stream) -> None:
        kind = stream.headers.get("streamtype", "")
        # Clients before requestID paired the error stream n with the data stream n+2.
        request_id = stream.headers.get("requestid") or str(stream.id if kind == "error" else stream.id - 2)
        pair = self.pairs.setdefault(request_id, _Pair())
        if kind == "error" and pair.error is None:
            pair.error = stream
        elif kind == "data" and pair.data is None:
            pair.data = stream
        else:
            log.warning("port-forward: unexpected stream", stream_type=kind, request_id=request_id)
            stream.reset()
            return
        if pair.error is not None and pair.data is not None and not pair.started:
            pair.started = True
            del self.pairs[request_id]
            task = asyncio.create_task(self._forward(pair.error, pair.data))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _forward(self, error: Stream, data: Stream) -> None:
        port_text = data.headers.get("port", "")
        try:
            port = int(port_text)
            if not 0 < port < 65536:
                raise ValueError
        except ValueError:
            await self._fail(error, data, f"invalid port {port_text!r}")
            return
        try:
            reader, writer = await self.runtime.dial(self.pod_id, port)
        except (SkiffError, OSError) as exc:
            message = exc.message if isinstance(exc, SkiffError) else str(exc)
            await self._fail(error, data, f"error forwarding port {port} to pod {self.pod_id}: {message}")
            return
        try:
            await asyncio.gather(self._client_to_pod(data, writer), self._pod_to_client(reader, data))
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            with contextlib.suppress(ConnectionError):
                await error.close()

    @staticmethod
    async def _fail(error: Stream, data: Stream, message: str) -> None:
        log.info("port-forward failed", error=message)
        with contextlib.suppress(ConnectionError):
            await error.write(message.encode())
            await error.close()
        data.reset()

    @staticmethod
    async def _client_to_pod(data: Stream, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while chunk := await data.read():
                writer.write(chunk)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()

    @staticmethod
    async def _pod_to_client(reader: asyncio.StreamReader, data: Stream) -> None:
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(READ_SIZE):
                await data.write(chunk)
            await data.close()


async def serve(request: web.Request, pod_id: str, runtime: StreamRuntime) -> web.StreamResponse:
    session = await upgrade(request, (PROTOCOL,))
    if isinstance(session, web.Response):
        return session
    forwarder = _Forwarder(pod_id, runtime)
    try:
        while True:
            get = asyncio.ensure_future(session.arrived.get())
            gone = asyncio.ensure_future(session.conn.closed.wait())
            done, _ = await asyncio.wait({get, gone}, return_when=asyncio.FIRST_COMPLETED)
            if get in done:
                gone.cancel()
                forwarder.add(get.result())
                continue
            get.cancel()
            break
    finally:
        for task in list(forwarder.tasks):
            task.cancel()
        if forwarder.tasks:
            await asyncio.gather(*forwarder.tasks, return_exceptions=True)
        await session.close()
    return session.response
