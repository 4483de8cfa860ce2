"""Build contexts kept between builds by the digest of their bytes: the docker CLI sends the same
tar for the same files, so a rebuild of an unchanged context reuses the folder extracted last time
(and the checksums its COPYs computed, Context.picks) instead of extracting, hashing and removing it
again. A kept folder is never written after its extraction (.dockerignore is applied during it;
heredocs and COPY's tar go to each build's scratch), so builds may share it; one in use is never
removed. A changed file changes the digest: that build gets a folder of its own."""

from __future__ import annotations

import asyncio
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from services.daemon.builds.context import Context, receive

KEEP = 4                    # contexts kept unused
KEEP_BODY_MAX = 64 << 20    # a larger context is extracted for its build alone


@dataclass(slots=True)
class _Kept:
    ctx: Context
    users: int = 0


class KeptContexts:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._kept: dict[tuple[str, str], _Kept] = {}   # (digest, dockerfile) -> the extracted context
        self._removals: set[asyncio.Future[None]] = set()

    async def acquire(self, body: Path | bytes, size: int, digest: str, dockerfile: str) -> Context:
        """The context of ``body`` (extracted now, or kept from an earlier build with the same bytes);
        hand it back with release()."""
        key = (digest, dockerfile)
        kept = self._kept.get(key)
        if kept is not None:
            kept.users += 1
            self._kept[key] = self._kept.pop(key)  # most recently used last
            return kept.ctx
        root = self.folder / secrets.token_hex(12)
        root.mkdir(parents=True)
        extraction = asyncio.ensure_future(asyncio.to_thread(receive, body, root, dockerfile))
        try:
            ctx = await asyncio.shield(extraction)
        except asyncio.CancelledError:
            # The thread writes on: the folder goes once it is done, not from under it.
            extraction.add_done_callback(lambda done: (done.cancelled() or done.exception(), self._remove(root)))
            raise
        except BaseException:
            self._remove(root)
            raise
        if size <= KEEP_BODY_MAX and key not in self._kept:  # (another build may have kept it meanwhile)
            self._kept[key] = _Kept(ctx, users=1)
        return ctx

    def release(self, ctx: Context) -> None:
        """``ctx`` no longer used by its build: kept, or removed (after the build's answer) when it was
        never kept or more than KEEP are unused."""
        mine = next((k for k, v in self._kept.items() if v.ctx is ctx), None)
        if mine is None:
            self._remove(ctx.root)
            return
        self._kept[mine].users -= 1
        unused = [k for k, v in self._kept.items() if v.users == 0]
        for key in unused[:max(0, len(unused) - KEEP)]:  # least recently used first
            self._remove(self._kept.pop(key).ctx.root)

    def drop_unused(self) -> None:
        """docker builder prune: every kept context no build uses goes."""
        for key in [k for k, v in self._kept.items() if v.users == 0]:
            self._remove(self._kept.pop(key).ctx.root)

    def _remove(self, root: Path) -> None:
        removal = asyncio.ensure_future(asyncio.to_thread(shutil.rmtree, root, True))
        self._removals.add(removal)
        removal.add_done_callback(self._removals.discard)
