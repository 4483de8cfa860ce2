"""Docker's query parameters and JSON bodies, read alike by every resource module: boolean flags,
int32 numbers, ``filters``, since/until times."""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web

from services.common.errors import InvalidArgument
from services.dockermodel.times import parse_time


def flag(request: web.Request, name: str, default: bool = False) -> bool:
    value = request.query.get(name)
    if value is None or value == "":
        return default
    return value.lower() not in ("0", "false", "no")


def int_query(request: web.Request, name: str, default: int | None = None) -> int | None:
    value = request.query.get(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise InvalidArgument(f"invalid value for {name}: {value}") from None
    # The daemon's fields are int32: a larger number cannot cross the boundary (found by schemathesis).
    if not -(2**31) <= number < 2**31:
        raise InvalidArgument(f"invalid value for {name}: {value} is out of range")
    return number


def parse_filters(raw: str | None) -> dict[str, list[str]]:
    """Docker's ``filters``: {"name": ["a"]} or the older {"name": {"a": true}}."""
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        raise InvalidArgument(f"invalid filter: {raw}") from None
    if not isinstance(data, dict):
        raise InvalidArgument(f"invalid filter: {raw}")
    result: dict[str, list[str]] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            result[key] = [k for k, on in value.items() if on]
        elif isinstance(value, list):
            result[key] = [str(v) for v in value]
        else:
            raise InvalidArgument(f"invalid filter: {raw}")
    return result


def since_ns(value: str | None, name: str) -> int:
    """Docker's since/until as UNIX nanoseconds (0 when absent): UNIX seconds with an optional fraction,
    an RFC 3339 time, or a duration like 10m back from now."""
    if not value:
        return 0
    try:
        return int(float(value) * 1e9)
    except ValueError:
        pass
    units = {"s": 1, "m": 60, "h": 3600}
    if value[-1] in units and value[:-1].replace(".", "", 1).isdigit():
        return time.time_ns() - int(float(value[:-1]) * units[value[-1]] * 1e9)
    seconds = parse_time(value)
    if not seconds:
        raise InvalidArgument(f"invalid value for {name}: {value}")
    return int(seconds * 1e9)


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object; no body is an empty one."""
    try:
        body = await request.json() if request.can_read_body else {}
    except ValueError:
        raise InvalidArgument("invalid JSON body") from None
    if not isinstance(body, dict):
        raise InvalidArgument("invalid JSON body: expected an object")
    return body
