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
        self._queue: asyncio.Queue[BuildMessage | None] = asyncio.Queue()
        self._held: list[BuildMessage] = []

    def _put(self, message: BuildMessage) -> None:
        if self.quiet:
            self._held.append(message)
        else:
            self._queue.put_nowait(message)

    async def emit(self, text: str) -> None:
        self._put(BuildMessage(stream=[text]))

    def succeed(self, image: str, tags: list[str]) -> None:
        if self.quiet:
            self._held.clear()
            self._queue.put_nowait(BuildMessage(stream=[image + "\n"]))
            return
        self._put(BuildMessage(image_id=image))
        self._put(BuildMessage(stream=[f"Successfully built {image.removeprefix('sha256:')[:12]}\n",
                                       *[f"Successfully tagged {tag}\n" for tag in tags]]))

    def fail(self, message: str, code: int) -> None:
        for held in self._held:
            self._queue.put_nowait(held)
        self._held.clear()
        self._queue.put_nowait(BuildMessage(error=message, error_code=code))

    def end(self) -> None:
        self._queue.put_nowait(None)

    async def messages(self) -> AsyncIterator[BuildMessage]:
        """The messages until end(); consecutive texts already queued are joined into one."""
        while (message := await self._queue.get()) is not None:
            while _text_only(message) and not self._queue.empty():
                after = self._queue.get_nowait()
                if after is not None and _text_only(after):
                    message.stream.extend(after.stream)
                    continue
                yield message
                if after is None:
                    return
                message = after
            yield message


def _text_only(message: BuildMessage) -> bool:
    return bool(message.stream) and not message.image_id and not message.error
