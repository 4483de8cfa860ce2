"""The task event stream: ordered, timestamped, fanned out to every subscriber."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from services.common.shimproto import rfc3339_nano
from services.gen.skiff.highlevel.v1 import Event, EventType, ExitStatus

# A subscriber this far behind is cut off instead of growing the server's memory without bound.
MAX_BACKLOG = 10_000


class EventBus:
    def __init__(self) -> None:
        self._seq = 0
        self._subscribers: set[asyncio.Queue[Event | None]] = set()

    def publish(self, type_: EventType, id_: str, exec_id: str = "", pid: int = 0,
                exit_: ExitStatus | None = None) -> Event:
        self._seq += 1
        event = Event(seq=self._seq, timestamp=rfc3339_nano(), type=type_, id=id_, exec_id=exec_id, pid=pid,
                      exit=exit_ if exit_ is not None else None)
        for queue in list(self._subscribers):
            if queue.qsize() >= MAX_BACKLOG:
                self._subscribers.discard(queue)
                queue.put_nowait(None)
            else:
                queue.put_nowait(event)
        return event

    async def subscribe(self) -> AsyncIterator[Event]:
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self._subscribers.add(queue)
        try:
            while (event := await queue.get()) is not None:
                yield event
        finally:
            self._subscribers.discard(queue)
