"""The pty through --console-socket (create and exec), and ``exec`` with args, --process, --detach."""

from __future__ import annotations

import json
import os
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.lowlevel.conftest import Runtime, pid_alive, wait_until


@pytest.fixture
def console_socket(rt: Runtime) -> Iterator[tuple[socket.socket, Path]]:
    path = rt.prefix / "console.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(4)
    try:
        yield listener, path
    finally:
        listener.close()


def receive_master(listener: socket.socket, timeout: float = 10.0) -> int:
    listener.settimeout(timeout)
    conn, _ = listener.accept()
    with conn:
        conn.settimeout(timeout)
        _, fds, _, _ = socket.recv_fds(conn, 4096, 4)
    assert len(fds) == 1, fds
    return fds[0]


def read_until(fd: int, marker: bytes, timeout: float = 10.0) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while marker not in data and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the slave side is closed
            break
        if not chunk:
            break
        data += chunk
    return data


def test_pty_tty_and_console_size(rt: Runtime, console_socket: tuple[socket.socket, Path]) -> None:
    listener, path = console_socket

    def edit(spec: dict[str, Any]) -> None:
        spec["process"]["terminal"] = True
        spec["process"]["consoleSize"] = {"height": 33, "width": 111}

    cid, bundle, _ = rt.bundle(["sh", "-c", "tty; stty size; echo pty-done; sleep 60"], edit=edit)
    rt.create(cid, bundle, "--console-socket", str(path), out=bundle.parent / "out").ok()
    master = receive_master(listener)
    try:
        rt.cmd("start", cid).ok()
        text = read_until(master, b"pty-done").decode(errors="replace").replace("\r", "")
    finally:
        os.close(master)
    lines = text.splitlines()
    assert lines[0].startswith("/dev/pts/"), text
    assert lines[1] == "33 111", text
    rt.cmd("delete", "--force", cid).ok()
    rt.assert_nothing_left(cid, bundle)


def test_terminal_without_console_socket_is_refused(rt: Runtime) -> None:
    def edit(spec: dict[str, Any]) -> None:
        spec["process"]["terminal"] = True

    cid, bundle, _ = rt.bundle(["true"], edit=edit)
    r = rt.create(cid, bundle, out=bundle.parent / "out")
    assert r.returncode != 0
    assert "cannot allocate tty" in r.stderr, r
    rt.assert_nothing_left(cid, bundle)


def test_exec_with_tty(rt: Runtime, console_socket: tuple[socket.socket, Path]) -> None:
    """As a shim does it: exec --detach --tty --console-socket, the pty master comes back."""
    listener, path = console_socket
    cid, _, _ = rt.start_container(["sleep", "60"])
    pid_file = rt.prefix / "exec.pid"
    out = rt.prefix / "exec.out"
    script = "tty; stty size; echo exec-pty-done; sleep 60"
    argv = ["exec", "--detach", "--tty", "--console-socket", str(path), "--pid-file", str(pid_file), cid]
    proc = rt.popen(*argv, "sh", "-c", script, stdout=out)
    master = receive_master(listener)
    try:
        assert proc.wait(timeout=20) == 0, out.read_text()
        text = read_until(master, b"exec-pty-done").decode(errors="replace").replace("\r", "")
    finally:
        os.close(master)
    rt.track(int(pid_file.read_text()))
    assert text.splitlines()[0].startswith("/dev/pts/"), (text, out.read_text())
    assert "ModuleNotFoundError" not in out.read_text()


def test_exec_args_exit_code_and_output(rt: Runtime) -> None:
    cid, _, _ = rt.start_container(["sleep", "60"])
    r = rt.cmd("exec", cid, "sh", "-c", "echo exec-out; echo exec-err >&2; exit 7")
    assert r.returncode == 7, r
    assert r.stdout.strip() == "exec-out"
    assert "exec-err" in r.stderr
    r = rt.cmd(
        "exec", "--env", "FOO=bar", "--cwd", "/tmp", "--user", "1000:1000", cid, "sh", "-c", "echo $FOO $(pwd) $(id -u)"
    )
    assert r.returncode == 0, r
    assert r.stdout.split() == ["bar", "/tmp", "1000"]
    r = rt.cmd("exec", cid, "/no/such/binary")
    assert r.returncode != 0
    assert "no such file" in r.stderr.lower() or "not found" in r.stderr.lower(), r


def test_exec_process_file(rt: Runtime) -> None:
    cid, _, _ = rt.start_container(["sleep", "60"])
    process = {
        "args": ["sh", "-c", "echo from-process $GREETING $(id -g); exit 3"],
        "env": ["PATH=/bin", "GREETING=hello"],
        "cwd": "/",
        "user": {"uid": 1000, "gid": 100},
        "terminal": False,
    }
    path = rt.prefix / "process.json"
    path.write_text(json.dumps(process))
    r = rt.cmd("exec", "--process", str(path), cid)
    assert r.returncode == 3, r
    assert r.stdout.split() == ["from-process", "hello", "100"]


def test_exec_detach_pid_file(rt: Runtime) -> None:
    cid, _, _ = rt.start_container(["sleep", "60"])
    pid_file = rt.prefix / "exec.pid"
    r = rt.cmd("exec", "--detach", "--pid-file", str(pid_file), cid, "sleep", "60")
    assert r.returncode == 0, r
    pid = int(pid_file.read_text())
    rt.track(pid)
    assert pid_alive(pid)
    ps = wait_until(lambda: pid in json.loads(rt.cmd("ps", "--format", "json", cid).ok().stdout))
    assert ps
    # It shares the init's pid namespace.
    assert os.readlink(f"/proc/{pid}/ns/pid") == os.readlink(f"/proc/{rt.state(cid)['pid']}/ns/pid")
    rt.cmd("kill", "--all", cid, "KILL").ok()
    assert wait_until(lambda: not pid_alive(pid))


def test_exec_in_stopped_container_fails(rt: Runtime) -> None:
    cid, bundle, _ = rt.bundle(["true"])
    rt.create(cid, bundle, out=bundle.parent / "out").ok()
    rt.cmd("start", cid).ok()
    rt.wait_status(cid, "stopped")
    r = rt.cmd("exec", cid, "true")
    assert r.returncode != 0
    assert "stopped" in r.stderr or "not running" in r.stderr, r
