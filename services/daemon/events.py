"""The daemon's event bus: Docker's events (container create/start/die/...) kept for `since` and streamed live."""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import AsyncIterator

from services.common.grpc import grpc_errors
from services.daemon.records import Entry
from services.gen.skiff.daemon.v1 import DockerEvent, EventsBase, EventsSubscribeRequest

HISTORY = 1024          # events kept for `since` (dockerd keeps 256)
QUEUE_LIMIT = 4096      # a subscriber this far behind is dropped rather than growing without bound


class EventBus:
    def __init__(self) -> None:
        self.history: deque[DockerEvent] = deque(maxlen=HISTORY)
        self.subscribers: set[asyncio.Queue[DockerEvent | None]] = set()

    def container_event(self, action: str, entry: Entry, attrs: dict[str, str]) -> None:
        record = entry.record
        attributes = {**record.config.labels, "name": record.name, "image": record.image_ref, **attrs}
        self.publish(DockerEvent(type="container", action=action, id=record.id, attributes=attributes,
                                 time_nano=time.time_ns(), scope="local"))

    def publish(self, event: DockerEvent) -> None:
        self.history.append(event)
        for queue in list(self.subscribers):
            if queue.qsize() >= QUEUE_LIMIT:
                self.subscribers.discard(queue)
                queue.put_nowait(None)
            else:
                queue.put_nowait(event)

    async def subscribe(self, since_ns: int, until_ns: int, filters: dict[str, str]) -> AsyncIterator[DockerEvent]:
        wanted = {k: json.loads(v) for k, v in filters.items()}
        queue: asyncio.Queue[DockerEvent | None] = asyncio.Queue()
        # Registered before the history is copied, with no await between: no event is missed or doubled.
        self.subscribers.add(queue)
        past = [e for e in self.history if since_ns and e.time_nano >= since_ns]
        try:
            for event in past:
                if until_ns and event.time_nano > until_ns:
                    return
                if matches(event, wanted):
                    yield event
            while True:
                timeout = None
                if until_ns:
                    timeout = max(0.0, (until_ns - time.time_ns()) / 1e9)
                try:
                    event = await asyncio.wait_for(queue.get(), timeout)
                except TimeoutError:
                    return
                if event is None:
                    return
                if until_ns and event.time_nano > until_ns:
                    return
                if matches(event, wanted):
                    yield event
        finally:
            self.subscribers.discard(queue)


def matches(event: DockerEvent, wanted: dict[str, list[str]]) -> bool:
    """Docker's event filters: each key must match one of its values (type, event/action, container, label)."""
    for key, values in wanted.items():
        if not values:
            continue
        if key == "type" and event.type not in values:
            return False
        if key in ("event", "action") and event.action.split(":")[0] not in values and event.action not in values:
            return False
        if key == "container" and not any(event.id.startswith(v) or event.attributes.get("name") == v
                                          for v in values):
            return False
        if key == "label" and not any(_label(event, v) for v in values):
            return False
    return True


def _label(event: DockerEvent, wanted: str) -> bool:
    key, eq, value = wanted.partition("=")
    return key in event.attributes and (not eq or event.attributes[key] == value)


class EventsService(EventsBase):
    def __init__(self, bus: EventBus) -> None:
        self.bus = bus

    @grpc_errors
    async def subscribe(self, events_subscribe_request: EventsSubscribeRequest) -> AsyncIterator[DockerEvent]:
        r = events_subscribe_request
        async for event in self.bus.subscribe(r.since_ns, r.until_ns, dict(r.filters)):
            yield event
