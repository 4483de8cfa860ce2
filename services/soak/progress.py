"""The live view: one line rewritten in place on a terminal, a plain line every few seconds otherwise."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import TextIO

from services.soak.account import Account
from services.soak.histogram import Histogram

PLAIN_EVERY = 5.0
TTY_EVERY = 0.5


def line(account: Account, total: int | None) -> str:
    merged = Histogram()
    for h in account.timings.routes.values():
        merged.merge(h)
    rates = account.launches_per_second()
    recent = sum(rates[-5:]) / min(len(rates), 5) if rates else 0.0
    done = f"{account.succeeded}/{total}" if total else f"{account.succeeded}"
    return (f"launched {done}, tried {account.tried}, failed {sum(account.failed.values())} | "
            f"{recent:.1f}/s | p99 {merged.percentile(99) * 1000:.0f} ms | lost {len(account.lost)} "
            f"wrong {len(account.wrong_exit) + len(account.wrong_state)} | faults {len(account.faults)} | "
            f"{account.now():.0f} s")


async def show(account: Account, total: int | None, stop: asyncio.Event, out: TextIO = sys.stderr) -> None:
    tty = out.isatty()
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), TTY_EVERY if tty else PLAIN_EVERY)
        text = line(account, total)
        if tty:
            out.write("\r\x1b[K" + text)
        else:
            out.write(text + "\n")
        out.flush()
    if tty:
        out.write("\n")
        out.flush()
