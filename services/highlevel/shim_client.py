"""Async client of the shim protocol (services/common/shimproto.py) for the highlevel runtime."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from services.common.errors import ERROR_BY_KIND, ErrorKind, SkiffError, Unavailable
from services.common.shimproto import HEADER, MAX_FRAME, FrameKind, encode, encode_json

REQUEST_TIMEOUT = 70.0  # above the shim's own runtime timeout (60 s)


class ShimGone(Unavailable):
    """The shim's socket refused or closed mid-request: the shim may have died."""


def shim_error(reply: dict[str, Any]) -> SkiffError:
    error = reply["error"]
    kind = ERROR_BY_KIND.get(str(error.get("kind")), ERROR_BY_KIND[ErrorKind.INTERNAL])
    return kind(str(error.get("message", "shim error")))


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    header = await reader.readexactly(HEADER.size)
    kind, length = HEADER.unpack(header)
    if length > MAX_FRAME:
        raise ShimGone(f"shim frame of {length} bytes")
    return kind, await reader.readexactly(length)


@dataclass(slots=True)
class ShimStream:
    """A connection left open after its first reply: wait, attach."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    reply: dict[str, Any]

    async def frames(self) -> AsyncIterator[tuple[int, bytes]]:
        while True:
            try:
                frame = await read_frame(self.reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            yield frame

    async def send(self, kind: FrameKind, payload: bytes = b"") -> None:
        self.writer.write(encode(kind, payload))
        await self.writer.drain()

    def close(self) -> None:
        self.writer.close()


class ShimClient:
    __slots__ = ("socket",)

    def __init__(self, socket_path: str) -> None:
        self.socket = socket_path

    async def open(self, op: str, timeout: float | None = REQUEST_TIMEOUT, **fields: Any) -> ShimStream:
        """Sends one request and returns the connection with the shim's first reply."""
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(self.socket), 5)
        except (TimeoutError, OSError) as exc:
            raise ShimGone(f"shim socket {self.socket}: {exc}") from exc
        try:
            writer.write(encode_json({"op": op, **fields}))
            await writer.drain()
            kind, payload = await asyncio.wait_for(read_frame(reader), timeout)
        except (OSError, asyncio.IncompleteReadError) as exc:
            writer.close()
            raise ShimGone(f"shim {self.socket} closed during {op}") from exc
        except BaseException:
            writer.close()
            raise
        if kind != FrameKind.JSON:
            writer.close()
            raise ShimGone(f"shim {self.socket}: unexpected frame {kind}")
        reply = json.loads(payload)
        if "error" in reply:
            writer.close()
            raise shim_error(reply)
        return ShimStream(reader, writer, reply)

    async def request(self, op: str, timeout: float | None = REQUEST_TIMEOUT, **fields: Any) -> dict[str, Any]:
        stream = await self.open(op, timeout, **fields)
        stream.close()
        return stream.reply
