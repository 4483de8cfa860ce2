"""How apiserver, daemon and highlevel start, serve and stop: one scaffold for the three.

``run_service`` is their whole life as systemd (or ``skiff up``) sees it:

- signals first: a SIGTERM/SIGINT during the start still ends in an orderly stop;
- ``start()`` builds the service and serves on a ``Listener`` (a socket handed over by systemd
  through ``LISTEN_FDS``, as docker.socket does for dockerd, or a fresh one, the stale file of a
  dead predecessor unlinked);
- ``READY=1`` only once the service *answers* on its socket (its probe succeeded), not merely
  once it listens: Type=notify units and ``skiff up`` order the next service on it;
- ``WATCHDOG=1`` at half of ``WATCHDOG_USEC``, each beat after a probe: a wedged loop or a
  server that stopped answering is restarted by systemd;
- ``STATUS=`` lines from the service's ``status()`` (e.g. "3 containers running");
- ``RELOADING=1`` on SIGHUP, the service's ``reload()`` (daemon.json read again), then ``READY=1``;
- betterproto's attribute hooks replaced by equivalent faster ones (``common/protospeed.py``);
- glibc's malloc held to two arenas and trimmed every 30 s (``common/malloc.py``): a long-lived
  service's RSS follows what it uses, not its threads' past peaks;
- ``STOPPING=1`` on the signal, the service's own orderly stop, its socket file removed (unless
  systemd owns it), and an exit code: 0 after a signal, 1 when the start failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import os
import signal
import socket
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog

from services.common import malloc, protospeed
from services.common.sd_notify import Notifier, listen_fds, watchdog_interval

STATUS_EVERY = 5.0  # seconds between two looks at status() when it changes
PROBE_TIMEOUT = 5.0
READY_DEADLINE = 60.0


class ServiceError(Exception):
    """The service cannot start (its socket is taken, a probe never answered)."""


@dataclass(slots=True)
class Listener:
    """A bound, listening UNIX stream socket; ``owned`` when we made its file (and so remove it)."""

    sock: socket.socket
    path: str
    owned: bool
    activated: bool = False  # handed over by systemd (LISTEN_FDS)

    def close(self) -> None:
        self.sock.close()
        if self.owned:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)


def _answers(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as probe:
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


def listen_unix(path: str | os.PathLike[str], *, mode: int = 0o600, group: str | None = None,
                activation: bool = False) -> Listener:
    """The service's socket. With ``activation``, the one systemd handed over (LISTEN_FDS) when there
    is one: the file is systemd's (skiff.socket sets its mode and group). Otherwise a new one at
    ``path``: a file left by a dead predecessor is removed, a live one refused; ``mode`` is set
    before anyone can connect, and ``group`` (when that group exists) owns it, as dockerd's -G does."""
    path = os.fspath(path)
    if activation:
        handed = listen_fds()
        if handed:
            for extra in handed[1:]:
                extra.close()
            sock = handed[0]
            if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
                raise ServiceError(f"the socket systemd handed over is not a UNIX stream socket: {sock!r}")
            address = sock.getsockname()
            return Listener(sock, address if isinstance(address, str) and address else path, owned=False,
                            activated=True)
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(path).st_mode) and _answers(path):
            raise ServiceError(f"{path}: another process is serving on this socket")
        os.unlink(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind(path)
        os.chmod(path, mode)  # before listen(): no connection can be made with the umask's mode
        if group is not None:
            with contextlib.suppress(KeyError):
                os.chown(path, -1, grp.getgrnam(group).gr_gid)
        sock.listen(1024)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        raise
    return Listener(sock, path, owned=True)


def listen_tcp(address: str) -> Listener:
    """A listening TCP socket on ``host:port`` (IPv6 hosts bare or in brackets); its path is ``tcp://host:port``."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, int(port)))
        sock.listen(1024)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ServiceError(f"tcp://{address}: cannot listen: {exc.strerror}") from None
    bound = sock.getsockname()
    shown = f"[{bound[0]}]" if family == socket.AF_INET6 else bound[0]
    return Listener(sock, f"tcp://{shown}:{bound[1]}", owned=False)


# An HTTP/2 client's first words (RFC 9113 §3.4) and an empty SETTINGS frame: a gRPC server that
# answers with its own SETTINGS frame has accepted, and its protocol handler runs on its loop.
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
_H2_SETTINGS = 4


async def grpc_probe(path: str) -> None:
    """Raises unless the gRPC server on ``path`` answers the HTTP/2 handshake."""
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        writer.write(_H2_PREFACE)
        await writer.drain()
        header = await reader.readexactly(9)
        if header[3] != _H2_SETTINGS:
            raise ServiceError(f"{path}: answered the HTTP/2 preface with frame type {header[3]}")
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def http_probe(path: str, target: str = "/_ping") -> None:
    """Raises unless the HTTP server on ``path`` answers ``GET target`` with 200."""
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        writer.write(f"GET {target} HTTP/1.1\r\nHost: skiff\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        line = await reader.readline()
        if line.split(b" ", 2)[1:2] != [b"200"]:
            raise ServiceError(f"{path}: GET {target} answered {line!r}")
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def tcp_probe(path: str) -> None:
    """Raises unless ``tcp://host:port`` accepts a connection (a TLS listener answers nothing more
    without a client certificate)."""
    host, _, port = path.removeprefix("tcp://").rpartition(":")
    _, writer = await asyncio.open_connection(host.strip("[]"), int(port))
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


@dataclass(slots=True)
class Serving:
    """What a started service hands the scaffold."""

    listener: Listener
    probe: Callable[[str], Awaitable[None]]  # called with the socket's path; raises unless it answers
    stop: Callable[[], Awaitable[None]]  # orderly: stop serving, close what it opened
    status: Callable[[], str] | None = None  # one line for systemctl status
    reload: Callable[[], None] | None = None  # SIGHUP: raises to keep the configuration in force
    more: list[Listener] = field(default_factory=list)  # further sockets served (the apiserver's -H), closed at the end


async def _until_answers(serving: Serving, stop: asyncio.Event) -> bool:
    """True once the probe succeeds; False when a stop signal came first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + READY_DEADLINE
    delay = 0.005
    while not stop.is_set():
        try:
            await asyncio.wait_for(serving.probe(serving.listener.path), PROBE_TIMEOUT)
            return True
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ServiceError) as exc:
            if loop.time() > deadline:
                raise ServiceError(f"{serving.listener.path}: not answering after {READY_DEADLINE:.0f} s: {exc}") \
                    from exc
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        delay = min(delay * 2, 0.2)
    return False


async def _watchdog(serving: Serving, notifier: Notifier, interval: float, log: structlog.BoundLogger) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await asyncio.wait_for(serving.probe(serving.listener.path), interval)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ServiceError) as exc:
            log.warning("watchdog probe failed: no beat", error=str(exc))  # systemd restarts us if it lasts
            continue
        notifier.send("WATCHDOG=1")


async def _status(serving: Serving, notifier: Notifier, last: str, log: structlog.BoundLogger) -> None:
    assert serving.status is not None
    while True:
        await asyncio.sleep(STATUS_EVERY)
        try:
            text = serving.status().replace("\n", " ")
        except Exception as exc:  # a status line is never worth the service
            log.warning("status failed", error=str(exc))
            text = last
        if text != last:
            notifier.send(f"STATUS={text}")
            last = text


def _reload(serving: Serving, notifier: Notifier, log: structlog.BoundLogger) -> None:
    notifier.send("RELOADING=1")
    try:
        if serving.reload is not None:
            serving.reload()
        log.info("reloaded")
    except Exception as exc:  # dockerd's way: the error logged, the configuration in force kept
        log.error("reload failed: configuration in force kept", error=str(exc))
    notifier.send("READY=1")


async def run_service(name: str, start: Callable[[], Awaitable[Serving]]) -> int:
    """Start, announce, serve until SIGTERM/SIGINT, stop; the process's exit code."""
    log = structlog.get_logger(service=name)
    notifier = Notifier.from_environment()
    interval = watchdog_interval()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    notifier.send(f"STATUS={name}: starting", f"MAINPID={os.getpid()}")
    protospeed.install()
    malloc.limit_arenas()  # before start() makes the thread pools' threads (common/malloc.py)
    starting = asyncio.ensure_future(start())
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait([starting, stopping], return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():  # a signal during the start: no half-made service is left serving
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await starting
        notifier.send("STOPPING=1")
        log.info("stopped before serving")
        return 0
    stopping.cancel()
    try:
        serving = starting.result()
    except Exception as exc:
        log.exception("start failed")
        notifier.send(f"STATUS={name}: start failed: {exc}".replace("\n", " "))
        return 1
    helpers: list[asyncio.Task[None]] = []
    try:
        if not await _until_answers(serving, stop):
            notifier.send("STOPPING=1")
            await serving.stop()
            return 0
        # Until now SIGHUP ends the start (its default); from here on it reloads, as dockerd's.
        loop.add_signal_handler(signal.SIGHUP, _reload, serving, notifier, log)
        log.info("serving", socket=serving.listener.path, activated=serving.listener.activated,
                 more=[m.path for m in serving.more])
        status = (serving.status() if serving.status is not None else "serving").replace("\n", " ")
        notifier.send("READY=1", f"STATUS={status}")
        if interval is not None:
            helpers.append(asyncio.create_task(_watchdog(serving, notifier, interval, log)))
        if serving.status is not None and notifier.enabled:
            helpers.append(asyncio.create_task(_status(serving, notifier, status, log)))
        helpers.append(asyncio.create_task(malloc.trim_every()))
        await stop.wait()
        notifier.send("STOPPING=1", f"STATUS={name}: stopping")
        log.info("stopping")
        for helper in helpers:
            helper.cancel()
        await serving.stop()
    except ServiceError as exc:
        log.error("failed", error=str(exc))
        notifier.send(f"STATUS={name}: {exc}".replace("\n", " "))
        with contextlib.suppress(Exception):
            await serving.stop()
        return 1
    finally:
        for helper in helpers:
            helper.cancel()
        serving.listener.close()
        for more in serving.more:
            more.close()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)
    log.info("stopped")
    return 0
