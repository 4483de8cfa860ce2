"""A hijacked connection's input: the bytes the client sends after 101 go to a process's stdin.

On a terminal, dockerd watches that input for the detach keys (ctrl-p,ctrl-q unless the exec or
the attach names others, in the CLI's ``ctrl-x,a`` notation): the sequence is swallowed, nothing
more is forwarded, the stream ends for the client and the process runs on with its stdin open.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import structlog
from aiohttp import web

from services.common.errors import InvalidArgument, SkiffError
from services.common.grpc import call
from services.gen.skiff.daemon.v1 import ContainerOpsStub, StdinData

log = structlog.get_logger(service="apiserver")

DEFAULT_DETACH_KEYS = b"\x10\x11"  # ctrl-p, ctrl-q
# What each ``ctrl-<c>`` means: its position in this text (moby/term's table: ctrl-@ is NUL, ctrl-_ 31).
_CTRL = "@abcdefghijklmnopqrstuvwxyz[\\]^_"
DETACHED = "detached"  # how an input ended: the detach keys
CLOSED = "closed"  # the client closed its side (or the connection)


def parse_detach_keys(text: str, what: str = "detach keys") -> bytes:
    """``ctrl-p,ctrl-q`` as bytes: each comma-separated key is one character, ``ctrl-<c>`` or ``DEL``."""
    codes = bytearray()
    for key in text.split(","):
        raw = key.encode()
        if len(raw) == 1:
            codes += raw
        elif len(key) == 6 and key.startswith("ctrl-") and key[5] in _CTRL:
            codes.append(_CTRL.index(key[5]))
        elif key == "DEL":
            codes.append(127)
        else:
            raise InvalidArgument(f"Invalid {what} ({text}) provided")
    return bytes(codes)


class DetachWatch:
    """Finds the detach sequence in a stream of chunks; a partial match is held back until it is
    known not to be one (then it is forwarded after all)."""

    __slots__ = ("keys", "matched")

    def __init__(self, keys: bytes) -> None:
        self.keys = keys
        self.matched = 0

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """The bytes to forward, and whether the sequence is complete (what follows it is dropped)."""
        out = bytearray()
        for byte in data:
            if byte != self.keys[self.matched] and self.matched:
                out += self.keys[: self.matched]  # not the sequence after all
                self.matched = 0
            if byte == self.keys[self.matched]:
                self.matched += 1
                if self.matched == len(self.keys):
                    return bytes(out), True
                continue
            out.append(byte)
        return bytes(out), False


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
    """Takes over the connection's input (before the hijacked answer goes out: the client may write as
    soon as it has it); None when it cannot."""
    protocol = request.protocol
    if protocol is None or not hasattr(protocol, "set_parser"):
        return None
    parser = StdinParser()
    try:
        protocol.set_parser(parser)  # type: ignore[arg-type]
    except AssertionError:
        return None  # a plain (not upgraded) request: its body parser owns the input
    return parser


@dataclass(slots=True)
class Pump:
    """The forwarding task, and how the client's input ended (DETACHED or CLOSED) once it has."""

    task: asyncio.Task[None]
    ended: asyncio.Future[str]


def pump(parser: StdinParser, ops: ContainerOpsStub, container: str, exec_id: str, close_on_end: bool,
         detach_keys: bytes | None = None) -> Pump:
    """Forwards the client's input (taken with ``read_hijacked`` right after the hijack: what came
    since is queued) to the process until the client closes its side or, when ``detach_keys`` are
    given (a terminal), sends them. ``close_on_end``: the input's end closes the process's stdin
    (a detach never does)."""
    watch = DetachWatch(detach_keys) if detach_keys else None
    ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def end(how: str) -> None:
        if not ended.done():
            ended.set_result(how)

    async def chunks() -> AsyncIterator[StdinData]:
        yield StdinData(container=container, exec_id=exec_id, close_on_end=close_on_end)
        while True:
            data = await parser.queue.get()
            if data is None:
                end(CLOSED)
                return
            detached = False
            if watch is not None:
                data, detached = watch.feed(data)
            if data:
                yield StdinData(data=data)
            if detached:
                # Nothing more goes in; close_on_end is False on a terminal: the process keeps its stdin.
                end(DETACHED)
                return

    async def run() -> None:
        try:
            await call(ops.stdin(chunks()))
        except SkiffError as exc:
            log.info("stdin ended", container=container, exec_id=exec_id, error=exc.message)
        finally:
            end(CLOSED)

    return Pump(asyncio.ensure_future(run()), ended)


async def stop(pump: Pump | None) -> None:
    if pump is None:
        return
    pump.task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await pump.task
