"""The one mapping between services.common.errors kinds and gRPC status codes, both ways.

Servers decorate their handlers with ``grpc_errors``; clients wrap calls in ``client_errors()``
(or ``await call(...)``) and get the typed SkiffError back, never a bare GRPCError.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError

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
    except (ConnectionError, StreamTerminatedError) as exc:
        raise Unavailable(f"gRPC peer: {exc}") from exc


async def call(awaitable: Awaitable[T]) -> T:
    with client_errors():
        return await awaitable
