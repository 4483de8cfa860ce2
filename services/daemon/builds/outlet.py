"""What a build says, on its way to the client: each text a {"stream"} line, the image id (aux), the
outcome. Texts queued together travel as one message (a cached rebuild's whole stream at once, not
one gRPC message a line). With ``q`` (quiet) everything is held back, as dockerd's
notVerboseBuffer: a success says only the image id, a failure first what was held, then the error."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from services.gen.skiff.daemon.v1 import BuildMessage


class Outlet:
    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        # Texts as plain strings until sent (a betterproto message costs ~0.1 ms to make); None: the end.
        self._queue: asyncio.Queue[str | BuildMessage | None] = asyncio.Queue()
        self._held: list[str | BuildMessage] = []

    def _put(self, item: str | BuildMessage) -> None:
        if self.quiet:
            self._held.append(item)
        else:
            self._queue.put_nowait(item)

    async def emit(self, text: str) -> None:
        self._put(text)

    def succeed(self, image: str, tags: list[str]) -> None:
        if self.quiet:
            self._held.clear()
            self._queue.put_nowait(image + "\n")
            return
        self._put(BuildMessage(image_id=image))
        self._put(f"Successfully built {image.removeprefix('sha256:')[:12]}\n")
        for tag in tags:
            self._put(f"Successfully tagged {tag}\n")

    def fail(self, message: str, code: int) -> None:
        for held in self._held:
            self._queue.put_nowait(held)
        self._held.clear()
        self._queue.put_nowait(BuildMessage(error=message, error_code=code))

    def end(self) -> None:
        self._queue.put_nowait(None)

    async def messages(self) -> AsyncIterator[BuildMessage]:
        """The messages until end(); the texts queued together go as one."""
        while (item := await self._queue.get()) is not None:
            if isinstance(item, BuildMessage):
                yield item
                continue
            texts = [item]
            after: str | BuildMessage | None = ""
            while not self._queue.empty():
                after = self._queue.get_nowait()
                if not isinstance(after, str):
                    break
                texts.append(after)
                after = ""
            yield BuildMessage(stream=texts)
            if after is None:
                return
            if isinstance(after, BuildMessage):
                yield after
