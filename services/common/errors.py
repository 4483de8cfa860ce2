"""One error vocabulary for every service.

Each kind maps to one gRPC status and one HTTP status, in exactly one place each (the gRPC
helpers and the apiserver). Errors raised from a syscall carry the operation, the path and the
errno text, as crun's do: "mount `proc` to `/proc`: Permission denied".
"""

from __future__ import annotations

from posix import strerror  # not os: its import is 2.5 ms of every skiff-lowlevel launch


class ErrorKind:
    """The kinds, as string constants: ``enum`` costs 2 ms of import on every runtime launch."""

    NOT_FOUND = "not_found"
    ALREADY_EXISTS = "already_exists"
    INVALID_ARGUMENT = "invalid_argument"
    FAILED_PRECONDITION = "failed_precondition"
    CONFLICT = "conflict"
    UNAVAILABLE = "unavailable"
    UNAUTHORIZED = "unauthorized"  # credentials refused (a registry's login): Docker's errdefs.Unauthorized
    INTERNAL = "internal"
    NOT_IMPLEMENTED = "not_implemented"  # Docker's errdefs.NotImplemented (501): e.g. logs of a none driver


class SkiffError(Exception):
    """Base of every typed error; ``kind`` decides the status across a boundary."""

    kind: str = ErrorKind.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(SkiffError):
    kind = ErrorKind.NOT_FOUND


class AlreadyExists(SkiffError):
    kind = ErrorKind.ALREADY_EXISTS


class InvalidArgument(SkiffError):
    kind = ErrorKind.INVALID_ARGUMENT


class FailedPrecondition(SkiffError):
    kind = ErrorKind.FAILED_PRECONDITION


class Conflict(SkiffError):
    kind = ErrorKind.CONFLICT


class Unavailable(SkiffError):
    kind = ErrorKind.UNAVAILABLE


class Unauthorized(SkiffError):
    kind = ErrorKind.UNAUTHORIZED


class Internal(SkiffError):
    kind = ErrorKind.INTERNAL


class NotSupported(SkiffError):
    kind = ErrorKind.NOT_IMPLEMENTED


class SyscallError(Internal):
    """A failed system call, told as operation, path and errno."""

    def __init__(self, operation: str, path: str | None, errno_value: int) -> None:
        self.operation = operation
        self.path = path
        self.errno = errno_value
        where = f" `{path}`" if path else ""
        super().__init__(f"{operation}{where}: {strerror(errno_value)}")


ERROR_BY_KIND: dict[str, type[SkiffError]] = {
    ErrorKind.NOT_FOUND: NotFound,
    ErrorKind.ALREADY_EXISTS: AlreadyExists,
    ErrorKind.INVALID_ARGUMENT: InvalidArgument,
    ErrorKind.FAILED_PRECONDITION: FailedPrecondition,
    ErrorKind.CONFLICT: Conflict,
    ErrorKind.UNAVAILABLE: Unavailable,
    ErrorKind.UNAUTHORIZED: Unauthorized,
    ErrorKind.INTERNAL: Internal,
    ErrorKind.NOT_IMPLEMENTED: NotSupported,
}
