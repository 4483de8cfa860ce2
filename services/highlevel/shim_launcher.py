"""Launching a container's shim: forked by the shim zygote, or spawned as ``skiff-shim STATE_DIR``.

highlevel starts one zygote (``python -S -m services.shim.zygote SOCKET``, see
proto/skiff/shim/v1/README.md) on its first create and stops it on its own clean stop; shims
forked by it share its imported code copy-on-write (per-shim PSS 4.05 → 1.77 MiB). A dead zygote
is replaced once; if that fails too, or with SKIFF_SHIM_ZYGOTE=0, the shim is spawned directly.
Either way the answer is the launcher's one line: ``{"pid": N, "shim_pid": M}`` or ``{"error": ...}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

import structlog

from services.common.errors import Internal
from services.common.shimproto import ZYGOTE_TITLE_ROOM

log = structlog.get_logger(service="highlevel")

SHIM_START_TIMEOUT = 90.0
ZYGOTE_START_TIMEOUT = 20.0
# The folder that holds the ``services`` package: the shim runs with ``python -S`` (no site
# import: faster start, less memory), so it finds our code through PYTHONPATH instead.
CODE_ROOT = str(Path(__file__).resolve().parents[2])
# SKIFF_SHIM_ZYGOTE=0 spawns each shim as its own interpreter instead.
USE_ZYGOTE = os.environ.get("SKIFF_SHIM_ZYGOTE", "1") != "0"


class ZygoteUnavailable(Exception):
    """No zygote answers on its socket: start one, or spawn the shim directly."""


class ShimLauncher:
    def __init__(self, run_dir: Path) -> None:
        self.zygote_socket = str(run_dir / "zygote.sock")
        self._zygote_lock = asyncio.Lock()
        self.use_zygote = USE_ZYGOTE
        self.seccomp_cache = str(run_dir / "seccomp")

    @property
    def env(self) -> dict[str, str]:
        """The shims' environment, which their runtime commands inherit: skiff-lowlevel keeps the
        seccomp programs it builds in the folder named there, on this tmpfs (lowlevel/seccomp.py)."""
        return dict(os.environ, PYTHONPATH=CODE_ROOT, SKIFF_SECCOMP_CACHE=self.seccomp_cache)

    async def launch(self, id_: str, state_dir: Path) -> tuple[bytes, bytes]:
        """The launcher's answer and stderr: forked by the zygote, or a fresh ``skiff-shim``."""
        if self.use_zygote:
            for attempt in range(2):
                try:
                    return await self._zygote_launch(id_, state_dir), b""
                except ZygoteUnavailable as exc:
                    # A dead zygote is replaced once; if that fails too, the shim is spawned directly.
                    if attempt == 0 and await self._start_zygote():
                        continue
                    log.warning("shim zygote unavailable, spawning directly", error=str(exc))
                    break
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-S", "-m", "services.shim", str(state_dir), env=self.env,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            start_new_session=True)
        try:
            return await asyncio.wait_for(proc.communicate(), SHIM_START_TIMEOUT)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise Internal(f"shim for {id_}: no answer in {SHIM_START_TIMEOUT:.0f} s") from None

    async def _zygote_launch(self, id_: str, state_dir: Path) -> bytes:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(self.zygote_socket), 5)
        except (TimeoutError, OSError) as exc:
            raise ZygoteUnavailable(f"{self.zygote_socket}: {exc}") from exc
        try:
            writer.write(str(state_dir).encode() + b"\n")
            await writer.drain()
            answer = await asyncio.wait_for(reader.readline(), SHIM_START_TIMEOUT)
        except TimeoutError:
            raise Internal(f"shim for {id_}: no answer in {SHIM_START_TIMEOUT:.0f} s") from None
        except OSError as exc:
            raise Internal(f"shim for {id_}: zygote connection lost: {exc}") from exc
        finally:
            writer.close()
        if not answer:
            # The request may have been forked already: the creation counts as failed and is cleaned.
            raise Internal(f"shim for {id_}: the zygote closed without an answer")
        return answer

    async def _start_zygote(self) -> bool:
        """Starts a detached zygote (its launcher exits once the socket listens); False on failure."""
        async with self._zygote_lock:
            with contextlib.suppress(OSError, TimeoutError):
                _, writer = await asyncio.wait_for(asyncio.open_unix_connection(self.zygote_socket), 2)
                writer.close()
                return True  # another create started it meanwhile
            try:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-S", "-m", "services.shim.zygote", self.zygote_socket, " " * ZYGOTE_TITLE_ROOM,
                    env=self.env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE, start_new_session=True)
                out, err = await asyncio.wait_for(proc.communicate(), ZYGOTE_START_TIMEOUT)
            except (OSError, TimeoutError) as exc:
                log.warning("shim zygote did not start", error=repr(exc))
                return False
            if proc.returncode != 0 or b"ready" not in out:
                log.warning("shim zygote did not start", error=err.decode(errors="replace")[-500:])
                return False
            log.info("shim zygote started", socket=self.zygote_socket)
            return True

    def stop_zygote(self) -> None:
        """On highlevel's own shutdown: the zygote serves only highlevel (the next start makes a
        new one), and the shims it forked are independent of it, so containers keep running."""
        pid = read_int(Path(self.zygote_socket + ".pid"))
        if not pid:
            return
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"services.shim.zygote" not in f.read():
                    return  # the pid was reused by something else
            os.kill(pid, signal.SIGTERM)
        except (FileNotFoundError, ProcessLookupError):
            pass


def read_int(path: Path) -> int:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return 0
