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
