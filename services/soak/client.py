"""The Docker Engine API over a UNIX socket, asyncio on aiohttp's UNIX connector (no thread per call).

Every call has a timeout and is timed into its route's histogram; a failure becomes ``CallFailed``
with a cause the account can group by (HTTP status and Docker's message with ids elided, a timeout,
or a broken connection). ``persist`` retries a *checking* call across an engine restart, within a
deadline; launches are never retried (a failed launch is what the account counts).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp

from services.soak.histogram import Histogram

API_VERSION = "v1.41"
_IDS = re.compile(r"\b[0-9a-f]{12,64}\b")
_NAMES = re.compile(r"soak-[0-9a-z]+-\d+")
T = TypeVar("T")


class CallFailed(Exception):
    """One API call failed; ``status`` is None when no HTTP answer came (timeout, connection)."""

    def __init__(self, route: str, status: int | None, message: str, *, timed_out: bool = False,
                 garbled: bool = False) -> None:
        super().__init__(f"{route}: {status or 'no answer'} {message}")
        self.route = route
        self.status = status
        self.message = message
        self.timed_out = timed_out
        self.garbled = garbled  # a success status whose body is not the JSON the route answers

    @property
    def cause(self) -> str:
        """Grouping key: the same failure of different containers counts as one cause."""
        message = _NAMES.sub("<name>", _IDS.sub("<id>", self.message))[:200]
        return f"{self.route}: {self.status if self.status is not None else 'no answer'} {message}"


@dataclass(slots=True)
class Timings:
    """Latency per route (successful calls) and failures per cause; hangs are calls that timed out,
    garbled answers are successes whose body could not be read (both fail a run)."""

    routes: dict[str, Histogram] = field(default_factory=dict)
    failures: Counter[str] = field(default_factory=Counter)
    hangs: Counter[str] = field(default_factory=Counter)
    hang_cases: list[str] = field(default_factory=list)  # the first few, with their path and time
    garbled: list[str] = field(default_factory=list)

    def record(self, route: str, seconds: float) -> None:
        self.routes.setdefault(route, Histogram()).record(seconds)


class DockerApi:
    def __init__(self, socket_path: str, timings: Timings, timeout: float = 60.0, limit: int = 256) -> None:
        self.socket_path = socket_path
        self.timings = timings
        self.timeout = timeout
        self._connector = aiohttp.UnixConnector(path=socket_path, limit=limit)
        self._session = aiohttp.ClientSession(connector=self._connector, base_url="http://docker")

    async def close(self) -> None:
        await self._session.close()

    async def reset(self) -> None:
        """Our pooled keep-alive connections closed (a fresh pool after): the engine's fd counts are
        then its own."""
        await self._session.close()
        self._connector = aiohttp.UnixConnector(path=self.socket_path, limit=self._connector.limit)
        self._session = aiohttp.ClientSession(connector=self._connector, base_url="http://docker")

    async def call(self, route: str, method: str, path: str, *, params: dict[str, str] | None = None,
                   body: Any = None, data: bytes | None = None, timeout: float | None = None,
                   raw: bool = False) -> Any:
        """One request; the decoded JSON answer (None when empty), or the bytes with ``raw``."""
        started = time.monotonic()
        sent = time.time()
        headers = {"Content-Type": "application/json"} if body is not None else (
            {"Content-Type": "application/x-tar"} if data is not None else {})
        payload = json.dumps(body).encode() if body is not None else data
        try:
            async with asyncio.timeout(timeout or self.timeout):
                async with self._session.request(method, f"/{API_VERSION}{path}", params=params, data=payload,
                                                 headers=headers) as response:
                    content = await response.read()
                    status = response.status
        except TimeoutError:
            self.timings.failures[f"{route}: timeout"] += 1
            self.timings.hangs[route] += 1
            if len(self.timings.hang_cases) < 20:
                self.timings.hang_cases.append(f"{method} {path} at {time.strftime('%H:%M:%S')} "
                                               f"(sent {time.strftime('%H:%M:%S', time.localtime(sent))})")
            raise CallFailed(route, None, f"no answer in {timeout or self.timeout:g} s", timed_out=True) from None
        except (aiohttp.ClientError, OSError) as exc:
            failed = CallFailed(route, None, f"{type(exc).__name__}: {exc}")
            self.timings.failures[failed.cause] += 1
            raise failed from None
        if status >= 400:
            try:
                message = str(json.loads(content).get("message", ""))
            except (ValueError, AttributeError):
                message = content[:200].decode(errors="replace")
            failed = CallFailed(route, status, message)
            self.timings.failures[failed.cause] += 1
            raise failed
        if raw:
            self.timings.record(route, time.monotonic() - started)
            return content
        try:
            decoded = json.loads(content) if content.strip() else None
        except ValueError as exc:
            # Not the engine's JSON (a stream cut or two answers run together): a wrong answer the
            # account fails the run for, never a crash of the tool.
            failed = CallFailed(route, status, f"garbled answer ({exc}): {content[:120]!r}", garbled=True)
            self.timings.failures[failed.cause] += 1
            self.timings.garbled.append(f"{method} {path} at {time.strftime('%H:%M:%S')}: {failed.message}")
            raise failed from None
        self.timings.record(route, time.monotonic() - started)
        return decoded


def transient(exc: CallFailed) -> bool:
    """A failure an engine restart explains: no answer, or a 5xx (the service behind is down)."""
    return exc.status is None or exc.status >= 500


async def persist(attempt: Callable[[], Awaitable[T]], deadline: float) -> T:
    """Retries ``attempt`` on transient failures until ``deadline`` (monotonic); the last failure stays."""
    delay = 0.1
    while True:
        try:
            return await attempt()
        except CallFailed as exc:
            if not transient(exc) or time.monotonic() + delay > deadline:
                raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)


def demux(stream: bytes) -> tuple[list[str], list[str]]:
    """Docker's 8-byte framed log stream (no tty) -> (stdout lines, stderr lines)."""
    out: list[bytes] = []
    err: list[bytes] = []
    offset = 0
    while offset + 8 <= len(stream):
        kind = stream[offset]
        size = int.from_bytes(stream[offset + 4:offset + 8], "big")
        chunk = stream[offset + 8:offset + 8 + size]
        (err if kind == 2 else out).append(chunk)
        offset += 8 + size
    return (b"".join(out).decode(errors="replace").splitlines(),
            b"".join(err).decode(errors="replace").splitlines())
