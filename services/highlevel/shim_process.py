"""A shim's process as highlevel sees it: not its child (the zygote's, or double-forked to init), found by pid.

A shim's pid may be reused once it has gone (pid_max is 32768 on many machines): only a pidfd whose
process still names the shim's state folder may be waited on or killed, and the pidfd keeps
naming that process whatever happens to the number.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def pidfd(pid: int, state_dir: Path) -> int | None:
    """A pidfd of the shim serving ``state_dir``, or None when ``pid`` is no longer that shim."""
    try:
        fd = os.pidfd_open(pid)
    except (ProcessLookupError, OSError):
        return None
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if os.fsencode(str(state_dir)) in f.read():
                return fd
    except OSError:
        pass
    os.close(fd)
    return None


async def wait_exit(pid: int, state_dir: Path, timeout: float) -> None:
    """Until the shim has exited; SIGKILLed after ``timeout``. A pidfd turns readable the moment
    the process ends: no polling interval."""
    fd = pidfd(pid, state_dir)
    if fd is None:
        return
    loop = asyncio.get_running_loop()
    gone = loop.create_future()
    loop.add_reader(fd, lambda: gone.done() or gone.set_result(None))
    try:
        await asyncio.wait_for(gone, timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(fd, signal.SIGKILL)
    finally:
        loop.remove_reader(fd)
        os.close(fd)
