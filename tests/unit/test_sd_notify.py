"""sd_notify sends READY=1 to the socket systemd names, and is silent without one."""

from __future__ import annotations

import socket
import tempfile
from pathlib import Path

import pytest

from services.common.sd_notify import notify


def test_ready_datagram_reaches_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    with tempfile.TemporaryDirectory(prefix="skiff-test-") as d:
        path = str(Path(d) / "notify.sock")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
            server.bind(path)
            server.settimeout(5)
            monkeypatch.setenv("NOTIFY_SOCKET", path)
            assert notify() is True
            assert server.recv(64) == b"READY=1"


def test_without_systemd_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify() is False


def test_a_manager_that_stops_reading_never_blocks_the_sender() -> None:
    """The service sends on its event loop: a full queue drops the datagram instead of waiting."""
    from services.common.sd_notify import Notifier

    with tempfile.TemporaryDirectory(prefix="skiff-test-") as d:
        path = str(Path(d) / "notify.sock")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
            server.bind(path)
            notifier = Notifier(path)
            results = [notifier.send("WATCHDOG=1") for _ in range(2000)]  # far beyond max_dgram_qlen
            assert results[0] is True and results[-1] is False
            assert server.recv(64) == b"WATCHDOG=1"
        assert notifier.send("WATCHDOG=1") is False  # the manager is gone: no error either
