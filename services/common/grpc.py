"""The one mapping between services.common.errors kinds and gRPC status codes, both ways.

Servers decorate their handlers with ``grpc_errors``; clients wrap calls in ``client_errors()``
(or ``await call(...)``) and get the typed SkiffError back, never a bare GRPCError. Every service
reaches another through ``channel()``: a call in flight when its peer dies fails, never hangs; and
serves through ``ServiceServer``, which lets a connection hold more than h2's default 100 streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

from grpclib.client import Channel, Handler, Stream
from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError
from grpclib.protocol import H2Protocol
from grpclib.server import Server
from h2.connection import H2Connection
from h2.settings import SettingCodes

from services.common.errors import ERROR_BY_KIND, ErrorKind, SkiffError, Unavailable

STATUS_BY_KIND: dict[str, Status] = {
    ErrorKind.NOT_FOUND: Status.NOT_FOUND,
    ErrorKind.ALREADY_EXISTS: Status.ALREADY_EXISTS,
    ErrorKind.INVALID_ARGUMENT: Status.INVALID_ARGUMENT,
    ErrorKind.FAILED_PRECONDITION: Status.FAILED_PRECONDITION,
    ErrorKind.CONFLICT: Status.ABORTED,
    ErrorKind.UNAVAILABLE: Status.UNAVAILABLE,
    ErrorKind.UNAUTHORIZED: Status.UNAUTHENTICATED,
    ErrorKind.INTERNAL: Status.INTERNAL,
    ErrorKind.NOT_IMPLEMENTED: Status.UNIMPLEMENTED,
}
KIND_BY_STATUS: dict[Status, str] = {status: kind for kind, status in STATUS_BY_KIND.items()}

T = TypeVar("T")

# h2 remembers the last 65,536 closed streams of each connection (to tell a late frame on a closed
# stream from a protocol error). Every call is a stream, so a busy service grew by about a kilobyte
# a container launch for hours before that bound (skiff soak: RSS +13-34% over 12 minutes,
# tracemalloc: h2's _closed_streams). Frames still in flight concern the latest few streams only.
# 1,024, not 4,096: a full 4,096 is ~500 KiB a connection (~80 KiB at 1,024) and took a 10/s soak's
# first minutes to fill, growth the soak's after-the-first-minute criterion counted.
H2Connection.MAX_CLOSED_STREAMS = 1024


def to_grpc(error: SkiffError) -> GRPCError:
    return GRPCError(STATUS_BY_KIND[error.kind], error.message)


def from_grpc(error: GRPCError) -> SkiffError:
    kind = KIND_BY_STATUS.get(error.status, ErrorKind.INTERNAL)
    return ERROR_BY_KIND[kind](error.message or error.status.name)


def grpc_errors(handler: Callable[..., Any]) -> Callable[..., Any]:
    """Server side: a SkiffError raised by a handler (plain or streaming) leaves as its status."""
    if inspect.isasyncgenfunction(handler):

        @functools.wraps(handler)
        async def stream_wrapper(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
            try:
                async for item in handler(*args, **kwargs):
                    yield item
            except SkiffError as exc:
                raise to_grpc(exc) from exc

        return stream_wrapper

    @functools.wraps(handler)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await handler(*args, **kwargs)
        except SkiffError as exc:
            raise to_grpc(exc) from exc

    return wrapper


@contextlib.contextmanager
def client_errors() -> Iterator[None]:
    """Client side: a GRPCError becomes the typed error; a dead connection is Unavailable."""
    try:
        yield
    except GRPCError as exc:
        raise from_grpc(exc) from exc
    except (OSError, StreamTerminatedError) as exc:
        # OSError: ECONNREFUSED after a SIGKILL, but ENOENT once a service stopped cleanly (it
        # removes its socket file) — both mean the peer is away, not that the call was wrong.
        raise Unavailable(f"gRPC peer: {exc}") from exc


async def call(awaitable: Awaitable[T]) -> T:
    with client_errors():
        return await awaitable


async def while_unavailable(attempt: Callable[[], Awaitable[T]], *, within: float) -> T:
    """``attempt`` again, with a bounded back-off, while its peer is away (Unavailable: restarting)
    for up to ``within`` seconds; then its last error stands."""
    loop = asyncio.get_running_loop()
    deadline, delay = loop.time() + within, 0.1
    while True:
        try:
            return await attempt()
        except Unavailable:
            if loop.time() + delay > deadline:
                raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, 2.0)


_FINISHING: set[asyncio.Future[Any]] = set()


async def finish_even_if_caller_goes(work: Awaitable[T]) -> T:
    """Server side: an operation that must not stop halfway when its caller goes away.

    grpclib cancels a handler whose client's connection is lost (the client SIGKILLed); cut there, a
    start or a task create leaves what it made so far (a forked shim) known to no one. As dockerd
    finishes a start whose client went, the work runs on to its end; a caller still there gets its
    outcome."""
    task = asyncio.ensure_future(work)
    _FINISHING.add(task)
    task.add_done_callback(_finished)
    return await asyncio.shield(task)


def _finished(task: asyncio.Future[Any]) -> None:
    _FINISHING.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: its caller may be gone, the outcome is not an unhandled error


class _LossReporting(H2Protocol):
    """grpclib's connection, which also tells its channel when the peer is gone."""

    def __init__(self, on_lost: Callable[[], None], *args: Any) -> None:
        super().__init__(*args)
        self._on_lost = on_lost

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        self._on_lost()


class WatchedChannel(Channel):
    """grpclib's channel without its hang on a lost peer (grpclib issue 216).

    On connection loss grpclib fails the calls whose HTTP/2 stream is open, but not those still
    parked in ``send_request`` (the transport's write buffer full, or the peer's
    MAX_CONCURRENT_STREAMS reached): they waited for ever. Here every call not yet sent when the
    connection goes fails at once (``StreamTerminatedError``, hence ``Unavailable``); the next call
    connects again.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._unsent: weakref.WeakSet[Stream[Any, Any]] = weakref.WeakSet()

    def request(self, *args: Any, **kwargs: Any) -> Stream[Any, Any]:
        stream = super().request(*args, **kwargs)
        self._unsent.add(stream)
        return stream

    def _protocol_factory(self) -> H2Protocol:
        return _LossReporting(self._fail_unsent, Handler(), self._config, self._h2_config)

    def _fail_unsent(self) -> None:
        error = StreamTerminatedError("Connection lost")
        for stream in list(self._unsent):
            wrapper = getattr(stream, "_wrapper", None)  # made when the call is entered
            if wrapper is not None and not stream._send_request_done:
                wrapper.cancel(error)  # wakes the task parked inside it with this error
        self._unsent.clear()


def channel(path: str) -> Channel:
    """The client channel to a service's UNIX socket."""
    return WatchedChannel(path=path)


# h2 offers 100 concurrent streams a connection by default, and a client past it waits for one to
# close: each running container holds a Tasks.Wait stream from the daemon to highlevel (and each
# attached client a stream to the daemon), so the 101st container's calls would all have waited.
MAX_STREAMS = 1 << 20


class _ManyStreams(H2Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.connection._connection.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: MAX_STREAMS})
        self.connection.flush()


class ServiceServer(Server):
    """grpclib's server, offering its clients :data:`MAX_STREAMS` streams a connection instead of 100."""

    def _protocol_factory(self) -> H2Protocol:
        protocol = super()._protocol_factory()
        return _ManyStreams(protocol.handler, protocol.config, protocol.h2_config)
