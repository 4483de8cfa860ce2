"""The three services under systemd's protocols, without systemd as PID 1: a NOTIFY_SOCKET the test
binds sees READY=1 only once each service answers, WATCHDOG=1 beats and STOPPING=1 on SIGTERM;
systemd-socket-activate hands the apiserver its socket (as skiff.socket does); the units verify."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import docker
import pytest
from grpclib.client import Channel

from services.gen.skiff import highlevel
from services.gen.skiff.daemon.v1 import Empty, SystemStub
from tests.conftest import needs_root
from tests.e2e.netstack import cgroup_parent, network_env
from tests.e2e.stack import SERVICES, Stack

REPO = Path(__file__).resolve().parents[2]
WATCHDOG_USEC = 300_000  # a beat every 0.15 s


def _datagrams(sock: socket.socket, deadline: float) -> list[bytes]:
    """The lines of the next datagram, or [] at the deadline."""
    sock.settimeout(max(deadline - time.monotonic(), 0.01))
    try:
        return sock.recv(4096).split(b"\n")
    except TimeoutError:
        return []


def _drain(sock: socket.socket) -> None:
    sock.setblocking(False)
    try:
        while True:
            sock.recv(4096)
    except BlockingIOError:
        pass
    finally:
        sock.setblocking(True)


def _wait_line(sock: socket.socket, wanted: bytes, timeout: float, seen: list[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = _datagrams(sock, deadline)
        seen.extend(lines)
        if wanted in lines:
            return
    raise AssertionError(f"no {wanted!r} within {timeout} s; saw {seen}")


def _answers_now(stack: Stack, module: str) -> None:
    """One real call, no retry: READY=1 promised the service serves."""
    if module == "services.apiserver":
        client = docker.DockerClient(base_url=stack.base_url, timeout=10)
        try:
            assert client.ping() is True
        finally:
            client.close()
        return

    async def call() -> None:
        channel = Channel(path=str(stack.socket_of(module)))
        try:
            if module == "services.highlevel":
                await highlevel.v1.ImagesStub(channel).list(highlevel.v1.ListImagesRequest(), timeout=10)
            else:
                await SystemStub(channel).info(Empty(), timeout=10)
        finally:
            channel.close()

    asyncio.run(call())


def _start(stack: Stack, module: str, extra_env: dict[str, str], argv_prefix: list[str] | None = None,
           ) -> subprocess.Popen[bytes]:
    log_path = stack.prefix / f"{module.rsplit('.', 1)[1]}.log"
    stack.logs[module] = log_path
    argv = [sys.executable, "-m", module, "--root", str(stack.prefix)]
    if module != "services.apiserver":
        argv += ["--runtime", stack.runtime]
    env = dict(os.environ, SKIFF_LOG_FORMAT="json", SKIFF_CGROUP_PARENT=cgroup_parent(stack.prefix),
               **network_env(stack.prefix), **extra_env)
    if "NOTIFY_SOCKET" not in extra_env:
        env.pop("NOTIFY_SOCKET", None)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([*(argv_prefix or []), *argv], stdout=subprocess.DEVNULL, stderr=log, env=env,
                                cwd=REPO)
    stack.procs[module] = proc
    return proc


def test_each_service_ready_once_answering_then_watchdog_then_stopping(prefix: Path) -> None:
    needs_root()
    stack = Stack(prefix, os.environ.get("SKIFF_TEST_RUNTIME") or "skiff-lowlevel")
    listeners: dict[str, socket.socket] = {}
    try:
        for module in SERVICES:
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            address = str(prefix / f"notify-{module.rsplit('.', 1)[1]}.sock")
            listener.bind(address)
            listeners[module] = listener
            proc = _start(stack, module, {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": str(WATCHDOG_USEC)})
            seen: list[bytes] = []
            try:
                _wait_line(listener, b"READY=1", 90, seen)
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{module} log: {stack.logs[module].read_text()[-3000:]}") from None
            assert proc.poll() is None
            _answers_now(stack, module)
            assert any(line.startswith(b"STATUS=") for line in seen), seen
            beats: list[bytes] = []
            for _ in range(2):
                _wait_line(listener, b"WATCHDOG=1", 5, beats)
        for module in reversed(SERVICES):
            proc = stack.procs[module]
            _drain(listeners[module])  # unread beats fill its queue (10 datagrams): then sends are dropped
            proc.send_signal(signal.SIGTERM)
            _wait_line(listeners[module], b"STOPPING=1", 15, [])
            assert proc.wait(15) == 0, stack.logs[module].read_text()[-2000:]
            # Its socket file goes with it (it made it); the next start will not find a stale one.
            assert not stack.socket_of(module).exists()
        assert stack.leftovers([]) == []
    finally:
        for listener in listeners.values():
            listener.close()
        stack.force_cleanup()


def test_a_second_instance_on_a_live_socket_is_refused(prefix: Path) -> None:
    needs_root()
    stack = Stack(prefix, os.environ.get("SKIFF_TEST_RUNTIME") or "skiff-lowlevel")
    try:
        stack.start("services.highlevel")
        second = subprocess.run([sys.executable, "-m", "services.highlevel", "--root", str(prefix)],
                                capture_output=True, timeout=60, cwd=REPO,
                                env=dict(os.environ, SKIFF_CGROUP_PARENT=cgroup_parent(prefix)))
        assert second.returncode == 1
        assert b"another process is serving on this socket" in second.stderr
        _answers_now(stack, "services.highlevel")  # the first one still serves
    finally:
        stack.force_cleanup()


def test_socket_activation_hands_the_apiserver_its_socket(prefix: Path) -> None:
    needs_root()
    activate = shutil.which("systemd-socket-activate")
    if activate is None:
        pytest.skip("systemd-socket-activate (Debian package systemd) not installed")
    stack = Stack(prefix, os.environ.get("SKIFF_TEST_RUNTIME") or "skiff-lowlevel")
    handed = prefix / "activated.sock"
    try:
        for module in SERVICES[:2]:
            stack.start(module)
        # systemd-socket-activate binds and listens; the apiserver starts on the first connection
        # and serves that very socket (LISTEN_FDS=1), not the path its config names.
        env_args = [f"-E{name}" for name in ("PATH", "PYTHONPATH", "SKIFF_LOG_FORMAT") if name in os.environ]
        proc = _start(stack, "services.apiserver", {}, [activate, "-l", str(handed), *env_args])
        deadline = time.monotonic() + 10
        while not handed.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "systemd-socket-activate did not listen"
            time.sleep(0.02)
        client = docker.DockerClient(base_url=f"unix://{handed}", timeout=60)
        try:
            assert client.ping() is True  # this connection is what starts the apiserver
            assert client.info()["Containers"] == 0  # through daemon and highlevel
        finally:
            client.close()
        cli = subprocess.run(["docker", "-H", f"unix://{handed}", "version", "--format", "{{.Server.Version}}"],
                             capture_output=True, text=True, timeout=60)
        assert cli.returncode == 0, cli.stderr
        assert not stack.paths.api_socket.exists()  # it made no socket of its own
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        stack.stop_all()
    finally:
        stack.force_cleanup()


def test_units_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze (Debian package systemd) not installed")
    if not (REPO / ".venv" / "bin" / "skiff-apiserver").exists():
        pytest.skip("no .venv with the console scripts: the units' ExecStart= would not exist")
    subprocess.run([str(REPO / "deploy" / "install.sh"), "render", str(tmp_path)], check=True, timeout=30)
    units = sorted(str(p) for p in tmp_path.iterdir())
    assert [Path(u).name for u in units] == ["skiff-apiserver.service", "skiff-cri.service", "skiff-daemon.service",
                                              "skiff-highlevel.service", "skiff.socket"]
    result = subprocess.run([analyze, "verify", *units], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr
    text = {Path(u).name: Path(u).read_text() for u in units}
    for name in ("skiff-apiserver.service", "skiff-cri.service", "skiff-daemon.service", "skiff-highlevel.service"):
        assert "Type=notify" in text[name] and "WatchdogSec=" in text[name]
    for name in ("skiff-cri.service", "skiff-daemon.service", "skiff-highlevel.service"):
        assert "KillMode=process" in text[name]
    assert "ListenStream=/run/skiff/skiff.sock" in text["skiff.socket"]
    assert "SocketMode=0660" in text["skiff.socket"] and "SocketGroup=skiff" in text["skiff.socket"]


def test_skiff_up_starts_each_on_ready_and_stops_them(prefix: Path) -> None:
    """``skiff up`` waits for each service's READY=1 on a NOTIFY_SOCKET of its own before the next."""
    needs_root()
    stack = Stack(prefix, os.environ.get("SKIFF_TEST_RUNTIME") or "skiff-lowlevel")
    log_path = prefix / "up.log"
    env = dict(os.environ, SKIFF_LOG_FORMAT="json", SKIFF_CGROUP_PARENT=cgroup_parent(prefix), **network_env(prefix))
    env.pop("NOTIFY_SOCKET", None)
    with open(log_path, "wb") as log:
        up = subprocess.Popen([sys.executable, "-m", "services.up", "up", "--root", str(prefix), "--runtime",
                               stack.runtime], stdout=subprocess.DEVNULL, stderr=log, env=env, cwd=REPO)
    try:
        deadline = time.monotonic() + 120
        while b"skiff: ready" not in log_path.read_bytes():
            assert up.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.05)
        _answers_now(stack, "services.apiserver")  # ready means the last of the three answers
        up.send_signal(signal.SIGTERM)
        assert up.wait(60) == 0, log_path.read_text()[-3000:]
        for module in SERVICES:
            assert not stack.socket_of(module).exists()
        assert stack.leftovers([]) == []
    finally:
        if up.poll() is None:
            up.kill()
            up.wait(10)
        stack.force_cleanup()
