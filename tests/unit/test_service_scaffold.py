"""common.service and common.sd_notify without a service: the socket a service binds or is handed,
and the systemd variables read once and taken out of the environment (children never see them)."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from services.common.sd_notify import listen_fds, watchdog_interval
from services.common.service import ServiceError, listen_unix


def test_stale_socket_file_is_replaced_and_removed_on_close(tmp_path: Path) -> None:
    path = tmp_path / "run" / "svc.sock"
    path.parent.mkdir()
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(path))
    dead.close()  # the file stays, nobody listens: a predecessor that was killed
    listener = listen_unix(path, mode=0o660)
    try:
        assert listener.owned and stat.S_IMODE(os.stat(path).st_mode) == 0o660
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(path))
    finally:
        listener.close()
    assert not path.exists()


def test_live_socket_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "svc.sock"
    first = listen_unix(path)
    try:
        with pytest.raises(ServiceError, match="another process is serving"):
            listen_unix(path)
        assert path.exists()
    finally:
        first.close()


HANDED = """
import os, socket, sys
from services.common.service import listen_unix
path, configured = sys.argv[1], sys.argv[2]
handed = socket.socket(socket.AF_UNIX)
handed.bind(path)
handed.listen()
fd = handed.detach()
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()))
listener = listen_unix(configured, activation=True)
print(listener.owned, listener.path == path, "LISTEN_FDS" in os.environ, "LISTEN_PID" in os.environ)
listener.close()
print(os.path.exists(path), os.path.exists(configured))
"""


def test_handed_socket_is_used_and_not_removed(tmp_path: Path) -> None:
    """As systemd hands it: fd 3, LISTEN_FDS=1, LISTEN_PID the process's own (so: a process of its own)."""
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", HANDED, str(tmp_path / "activated.sock"),
                          str(tmp_path / "configured.sock")], capture_output=True, text=True, timeout=60,
                         cwd=repo, check=True)
    assert out.stdout.split() == ["False", "True", "False", "False", "True", "False"], out.stderr


def test_variables_for_another_process_are_ignored_and_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LISTEN_FDS", "1")
    monkeypatch.setenv("LISTEN_PID", "1")
    assert listen_fds() == [] and "LISTEN_FDS" not in os.environ
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert watchdog_interval() is None and "WATCHDOG_USEC" not in os.environ
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    assert watchdog_interval() == 1.0  # half of it, as sd_watchdog_enabled(3) advises
