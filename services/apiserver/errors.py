"""The one mapping from services.common.errors kinds to HTTP statuses, and Docker's error body."""

from __future__ import annotations

import json

from aiohttp import web

from services.common.errors import ErrorKind, SkiffError

HTTP_STATUS_BY_KIND: dict[str, int] = {
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.ALREADY_EXISTS: 409,
    ErrorKind.CONFLICT: 409,
    ErrorKind.INVALID_ARGUMENT: 400,
    ErrorKind.FAILED_PRECONDITION: 409,
    ErrorKind.UNAVAILABLE: 503,
    ErrorKind.UNAUTHORIZED: 401,
    ErrorKind.INTERNAL: 500,
    ErrorKind.NOT_IMPLEMENTED: 501,
}


def error_response(status: int, message: str) -> web.Response:
    # Exactly "application/json": the docker CLI shows the body raw (braces and all) unless the
    # Content-Type equals it, and aiohttp's json_response appends "; charset=utf-8".
    return web.Response(body=json.dumps({"message": message}).encode(), status=status, content_type="application/json")


def from_skiff_error(error: SkiffError) -> web.Response:
    return error_response(HTTP_STATUS_BY_KIND.get(error.kind, 500), error.message)
