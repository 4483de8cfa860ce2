"""kubelet's remotecommand protocol (exec and attach) over SPDY: ``v4.channel.k8s.io`` (what
client-go, hence crictl and kubectl, speaks), and v3, v2, ``channel.k8s.io`` for older clients.

The client opens one stream per channel, named by its ``streamType`` header: ``error`` always,
``stdin``/``stdout``/``stderr`` as the request asked (no ``stderr`` with a tty), ``resize`` with a
tty from v3 on (JSON ``{"Width":w,"Height":h}`` objects back to back). When the process ends, its
output streams are half-closed and the ``error`` stream carries the result: from v4 a JSON
metav1.Status (``Success``, or ``Failure`` with reason ``NonZeroExitCode`` and the exit code as the
``ExitCode`` cause, which client-go turns into the exit status), before v4 an error's text.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from services.common.errors import SkiffError
from services.cri.streaming.api import TerminalSize
from services.cri.streaming.spdy import Stream
from services.cri.streaming.upgrade import STREAM_CREATION_TIMEOUT, Session, upgrade

log = structlog.get_logger(service="cri")

V4, V3, V2, V1 = "v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"
PROTOCOLS = (V4, V3, V2, V1)  # kubelet's order of preference


class SpdyStreamIO:
    """A StreamIO (services.cri.streaming.api) over the session's streams."""

    def __init__(self, session: Session, streams: dict[str, Stream], *, stdin: bool, stdout: bool,
                 stderr: bool, tty: bool) -> None:
        self._session = session
        self._streams = streams
        self.stdin, self.stdout, self.stderr, self.tty = stdin, stdout, stderr and not tty, tty
        self._resize_buffer = ""

    @property
    def client_gone(self) -> asyncio.Event:
        return self._session.conn.closed

    async def read_stdin(self) -> bytes:
        stream = self._streams.get("stdin")
        return await stream.read() if stream is not None else b""

    async def _write(self, name: str, data: bytes) -> None:
        stream = self._streams.get(name)
        if stream is None or not data or self.client_gone.is_set():
            return
        with contextlib.suppress(ConnectionError):
            await stream.write(data)

    async def write_stdout(self, data: bytes) -> None:
        await self._write("stdout", data)

    async def write_stderr(self, data: bytes) -> None:
        await self._write("stderr", data)

    async def next_resize(self) -> TerminalSize | None:
        stream = self._streams.get("resize")
        if stream is None:
            return None
        decoder = json.JSONDecoder()
        while True:
            text = self._resize_buffer.lstrip()
            if text:
                try:
                    value, end = decoder.raw_decode(text)
                except json.JSONDecodeError:
                    value, end = None, -1
                if end >= 0:
                    self._resize_buffer = text[end:]
                    if isinstance(value, dict):
                        return TerminalSize(int(value.get("Width") or 0), int(value.get("Height") or 0))
                    continue
            chunk = await stream.read()
            if not chunk:
                return None
            self._resize_buffer += chunk.decode(errors="replace")


def expected_streams(protocol: str, *, stdin: bool, stdout: bool, stderr: bool, tty: bool) -> set[str]:
    wanted = {"error"}
    if stdin:
        wanted.add("stdin")
    if stdout:
        wanted.add("stdout")
    if stderr and not tty:
        wanted.add("stderr")
    if tty and protocol in (V4, V3):
        wanted.add("resize")
    return wanted


async def collect_streams(session: Session, wanted: set[str]) -> dict[str, Stream]:
    """The client's streams by type, once all ``wanted`` arrived (TimeoutError after kubelet's 30 s)."""
    streams: dict[str, Stream] = {}

    async def until_all() -> None:
        while not wanted <= streams.keys():
            get = asyncio.ensure_future(session.arrived.get())
            gone = asyncio.ensure_future(session.conn.closed.wait())
            done, _ = await asyncio.wait({get, gone}, return_when=asyncio.FIRST_COMPLETED)
            if get not in done:
                get.cancel()
                raise ConnectionResetError("the client left before opening its streams")
            gone.cancel()
            stream = get.result()
            kind = stream.headers.get("streamtype", "")
            if kind in wanted and kind not in streams:
                streams[kind] = stream
            else:
                log.warning("streaming: unexpected stream", stream_type=kind)
                stream.reset()

    await asyncio.wait_for(until_all(), STREAM_CREATION_TIMEOUT)
    return streams


def status_message(protocol: str, exit_code: int | None, error: str | None, what: str) -> bytes:
    """What the ``error`` stream carries at the end (nothing before v4 when all went well)."""
    if protocol != V4:
        if error:
            return error.encode()
        if exit_code:
            return f"command terminated with non-zero exit code: {what}, exit code {exit_code}".encode()
        return b""
    if error:
        status = {"metadata": {}, "status": "Failure", "message": error, "reason": "InternalError",
                  "details": {"causes": [{"message": error}]}, "code": 500}
    elif exit_code:
        status = {"metadata": {}, "status": "Failure",
                  "message": f"command terminated with non-zero exit code: {what}, exit code {exit_code}",
                  "reason": "NonZeroExitCode",
                  "details": {"causes": [{"reason": "ExitCode", "message": str(exit_code)}]}}
    else:
        status = {"metadata": {}, "status": "Success"}
    return json.dumps(status).encode()


async def serve(request: web.Request, *, stdin: bool, stdout: bool, stderr: bool, tty: bool, what: str,
                run: Callable[[SpdyStreamIO], Awaitable[int | None]]) -> web.StreamResponse:
    """One exec or attach: the upgrade, the client's streams, ``run`` (its exit code; None for an
    attach), the result on the error stream, the session closed."""
    session = await upgrade(request, PROTOCOLS)
    if isinstance(session, web.Response):
        return session
    try:
        wanted = expected_streams(session.protocol, stdin=stdin, stdout=stdout, stderr=stderr, tty=tty)
        try:
            streams = await collect_streams(session, wanted)
        except (TimeoutError, ConnectionResetError) as exc:
            log.warning("streaming: streams not opened", error=str(exc) or "timeout", what=what)
            return session.response
        io = SpdyStreamIO(session, streams, stdin=stdin, stdout=stdout, stderr=stderr, tty=tty)
        exit_code: int | None = None
        error: str | None = None
        try:
            exit_code = await run(io)
        except SkiffError as exc:
            error = exc.message
        log.info("streaming: ended", what=what, exit_code=exit_code, error=error,
                 client_gone=session.conn.closed.is_set())
        for name in ("stdout", "stderr"):
            if name in streams and not session.conn.closed.is_set():
                await streams[name].close()
        if not session.conn.closed.is_set():
            message = status_message(session.protocol, exit_code, error, what)
            if message:
                await streams["error"].write(message)
            await streams["error"].close()
    finally:
        await session.close()
    return session.response
