"""systemd's readiness protocol (Type=notify): one datagram to $NOTIFY_SOCKET, nothing if unset."""

from __future__ import annotations

import os
import socket


def notify(state: str = "READY=1") -> bool:
    """Tell systemd ``state``; returns False when not run by systemd (no NOTIFY_SOCKET)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # an abstract socket
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.connect(address)
        sock.sendall(state.encode())
    return True
