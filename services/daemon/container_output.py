"""A container's output as clients read it: ``docker logs`` (with ``--follow``) and attach's live output.

Both read the log the shim writes; nothing tells the daemon of a new line, so following polls it,
woken early by the container's changes (its exit above all)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from services.common.errors import NotSupported
from services.daemon import logdrivers
from services.daemon import logs as logfile
from services.daemon.records import Entry
from services.gen.skiff.daemon.v1 import AttachInfo, LogEntry, LogStream


async def logs(entry: Entry, *, follow: bool, stdout: bool, stderr: bool, tail: int) -> AsyncIterator[LogEntry]:
    if not logdrivers.readable(entry.record):
        raise NotSupported(logfile.NOT_READABLE)
    wanted = {LogStream.STDOUT} if stdout else set()
    if stderr:
        wanted.add(LogStream.STDERR)
    path = entry.record.log_path
    codec = logfile.codec_of(entry.record.config.host.log_driver)
    entries, cursor = await asyncio.to_thread(logfile.read_all, path, codec)
    if tail >= 0:
        entries = entries[-tail:] if tail else []
    for item in entries:
        if item.stream in wanted:
            yield item
    if follow:
        async for item in _follow(entry, path, codec, cursor, wanted, entry.exits, stop_when_stopped=True):
            yield item


async def attach_output(entry: Entry, stdout: bool, stderr: bool) -> AsyncIterator[LogEntry]:
    """Live output from now until the container's next exit, read from the shim's log. A container not
    running is followed through its next run, as dockerd's attach (``docker start -a``) is."""
    wanted = ({LogStream.STDOUT} if stdout else set()) | ({LogStream.STDERR} if stderr else set())
    exits = entry.exits
    codec = logfile.codec_of(entry.record.config.host.log_driver)
    cursor = await asyncio.to_thread(logfile.end_cursor, entry.record.log_path, codec)
    # An empty first entry: armed. The caller lets its client start the container only after it.
    cfg = entry.record.config
    yield LogEntry(attached=AttachInfo(id=entry.record.id, tty=cfg.tty, open_stdin=cfg.open_stdin,
                                       stdin_once=cfg.stdin_once))
    async for item in _follow(entry, entry.record.log_path, codec, cursor, wanted, exits, stop_when_stopped=False):
        yield item


async def _follow(entry: Entry, path: str, codec: logfile.Codec, cursor: logfile.Cursor,
                  wanted: set[LogStream], exits: int, *, stop_when_stopped: bool) -> AsyncIterator[LogEntry]:
    """Polls the log (the shim writes it, nothing tells us) until the container's exit is drained."""
    try:
        while True:
            done = entry.removed or entry.exits > exits or (stop_when_stopped and not entry.running)
            for item in await asyncio.to_thread(logfile.read_new, path, cursor, codec):
                if item.stream in wanted:
                    yield item
            if done:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(entry.changed.wait(), 0.05)
    finally:
        cursor.close()
