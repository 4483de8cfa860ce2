"""systemd's service protocols, read from the environment once: readiness (``$NOTIFY_SOCKET``),
the watchdog (``$WATCHDOG_USEC``) and socket activation (``$LISTEN_FDS``), as sd_notify(3),
sd_watchdog_enabled(3) and sd_listen_fds(3) define them.

Each is taken out of ``os.environ`` when read (their ``unset_environment``): the services spawn
shims and runtimes, and a runtime that inherits ``NOTIFY_SOCKET`` would proxy a container's
readiness to systemd (runc does) while inherited ``LISTEN_FDS`` would name fds that are not there.
"""

from __future__ import annotations

import os
import socket

LISTEN_FDS_START = 3  # SD_LISTEN_FDS_START


class Notifier:
    """Datagrams to the service manager; does nothing when not run by one."""

    def __init__(self, address: str | None) -> None:
        if address and address.startswith("@"):
            address = "\0" + address[1:]  # an abstract socket
        self.address = address or None

    @classmethod
    def from_environment(cls) -> Notifier:
        return cls(os.environ.pop("NOTIFY_SOCKET", None))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *states: str) -> bool:
        """One datagram of ``KEY=value`` lines; False when there is no manager to tell, or it is not
        reading (its queue is full: net.unix.max_dgram_qlen is 10 by default).

        Never blocks: it is called on the event loop, and a manager that stopped reading must not
        stop the service (a blocking send would wait for room in its queue). Status text must not
        carry newlines: each line of the datagram is one assignment.
        """
        if self.address is None:
            return False
        payload = "\n".join(states).encode()
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK) as sock:
            try:
                sock.sendto(payload, self.address)
            except (BlockingIOError, ConnectionRefusedError, FileNotFoundError):
                return False
        return True


def notify(state: str = "READY=1") -> bool:
    """One-shot ``sd_notify(0, state)`` (the environment is left as it is)."""
    return Notifier(os.environ.get("NOTIFY_SOCKET")).send(state)


def watchdog_interval() -> float | None:
    """Seconds between two WATCHDOG=1 beats (half of ``WATCHDOG_USEC``), None when off or not ours."""
    usec = os.environ.pop("WATCHDOG_USEC", None)
    pid = os.environ.pop("WATCHDOG_PID", None)
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2 / 1_000_000 if value > 0 else None


def listen_fds() -> list[socket.socket]:
    """The sockets systemd handed this process (fds 3, 4, ...), close-on-exec; [] when none or not ours."""
    count = os.environ.pop("LISTEN_FDS", None)
    pid = os.environ.pop("LISTEN_PID", None)
    os.environ.pop("LISTEN_FDNAMES", None)
    if not count or pid != str(os.getpid()):
        return []
    found: list[socket.socket] = []
    for fd in range(LISTEN_FDS_START, LISTEN_FDS_START + int(count)):
        os.set_inheritable(fd, False)
        found.append(socket.socket(fileno=fd))
    return found
