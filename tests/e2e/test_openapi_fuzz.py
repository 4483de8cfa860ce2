"""schemathesis against the live stack: generated requests on the safe operations of openapi.yaml
(tag "fuzz") never get a 500 and never crash a service."""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import socket
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.stack import SERVICES, Stack

DOC = Path(__file__).resolve().parents[2] / "services" / "apiserver" / "openapi.yaml"
ST = Path(sys.executable).parent / "st"
BUDGET_SECONDS = 20


class _Forward(socketserver.BaseRequestHandler):
    """schemathesis speaks TCP; the apiserver listens on a UNIX socket: bytes are piped both ways."""

    server: _Forwarder

    def handle(self) -> None:
        with socket.socket(socket.AF_UNIX) as upstream:
            upstream.connect(self.server.target)
            pair = {self.request: upstream, upstream: self.request}
            while True:
                ready, _, _ = select.select(list(pair), [], [], 30)
                if not ready:
                    return  # idle for 30 s: the client is gone
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    pair[sock].sendall(data)


class _Forwarder(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, target: str) -> None:
        super().__init__(("127.0.0.1", 0), _Forward)
        self.target = target


@contextlib.contextmanager
def tcp_to_unix(path: Path) -> Iterator[str]:
    server = _Forwarder(str(path))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.mark.skipif(not ST.exists() and shutil.which("st") is None, reason="schemathesis not installed")
def test_schemathesis_no_server_errors(stack: Stack) -> None:
    with tcp_to_unix(stack.paths.api_socket) as url:
        env = dict(os.environ, SCHEMATHESIS_HOOKS="", NO_COLOR="1")
        run = subprocess.run(
            [str(ST) if ST.exists() else "st", "run", str(DOC), "--url", url, "--include-tag", "fuzz",
             "--checks", "not_a_server_error", "--max-examples", "8", "--max-time", str(BUDGET_SECONDS),
             "--request-timeout", "10", "--seed", "1", "--workers", "4", "--no-color"],
            capture_output=True, text=True, timeout=BUDGET_SECONDS + 60, env=env, cwd=stack.prefix)
    # The report's FAILURES section holds each failing request as a curl command line.
    assert run.returncode == 0, run.stdout[run.stdout.find("FAILURES"):][:6000] + run.stderr[-2000:]
    for module in SERVICES:
        assert stack.procs[module].poll() is None, f"{module} died during the run"
