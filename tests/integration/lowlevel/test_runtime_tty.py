"""A foreground ``run`` or ``exec -t`` with a terminal and no --console-socket: the runtime relays
the container's pty on the caller's terminal, as runc does. The caller's terminal is a real one,
made by ``script`` (util-linux); only a detached container needs a console socket."""

from __future__ import annotations

import os
import select
import shlex
import shutil
import subprocess
import time
from typing import Any

import pytest

from tests.integration.lowlevel.conftest import TIMEOUT, Runtime


@pytest.fixture(autouse=True)
def _needs_script() -> None:
    if shutil.which("script") is None:
        pytest.skip("needs script (util-linux)")


def terminal_bundle(rt: Runtime, args: list[str]) -> tuple[str, Any]:
    def edit(spec: dict[str, Any]) -> None:
        spec["process"]["terminal"] = True

    cid, bundle, _ = rt.bundle(args, edit=edit)
    return cid, bundle


def in_terminal(rt: Runtime, *args: str, before: str = "") -> subprocess.Popen[bytes]:
    """``args`` of the runtime, run by ``script`` on a new pty (its stdin fed through a pipe)."""
    command = shlex.join([*rt.argv, "--root", str(rt.root), *args])
    proc = subprocess.Popen(
        ["script", "-qfec", f"{before}{command}", "/dev/null"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=rt.prefix,
    )
    rt.procs.append(proc)
    return proc


def read_until(proc: subprocess.Popen[bytes], marker: bytes, timeout: float = TIMEOUT) -> bytes:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    data = b""
    deadline = time.monotonic() + timeout
    while marker not in data:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data


def finish(proc: subprocess.Popen[bytes]) -> tuple[int, bytes]:
    out, _ = proc.communicate(timeout=TIMEOUT)
    return proc.returncode, out


def test_run_relays_the_terminal_and_exit_code(rt: Runtime) -> None:
    cid, bundle = terminal_bundle(rt, ["sh", "-c", "tty; echo hello; exit 3"])
    proc = in_terminal(rt, "run", "--bundle", str(bundle), cid)
    code, out = finish(proc)
    assert code == 3, out
    assert b"/dev/pts/0" in out and b"hello\r\n" in out, out
    assert rt.cmd("state", cid).returncode != 0, "run left its container behind"
    rt.assert_nothing_left(cid, bundle)


def test_run_relays_stdin_to_the_container(rt: Runtime) -> None:
    cid, bundle = terminal_bundle(rt, ["sh", "-c", "echo ready; read x; echo got-$x"])
    proc = in_terminal(rt, "run", "--bundle", str(bundle), cid)
    assert b"ready" in read_until(proc, b"ready"), "the container never spoke"
    assert proc.stdin is not None
    proc.stdin.write(b"abc\r")  # a terminal's Enter: the container's tty turns CR into NL
    proc.stdin.flush()
    code, out = finish(proc)
    assert code == 0, out
    assert b"got-abc" in out, out
    rt.assert_nothing_left(cid, bundle)


def test_run_gives_the_container_the_callers_window_size(rt: Runtime) -> None:
    # runc sets the size only once the process started: the container asks after a handshake.
    cid, bundle = terminal_bundle(rt, ["sh", "-c", "echo ready; read x; stty size"])
    proc = in_terminal(rt, "run", "--bundle", str(bundle), cid, before="stty rows 33 cols 101; ")
    assert b"ready" in read_until(proc, b"ready"), "the container never spoke"
    assert proc.stdin is not None
    proc.stdin.write(b"\r")
    proc.stdin.flush()
    code, out = finish(proc)
    assert code == 0, out
    assert b"33 101" in out, out


def test_exec_tty_relays_the_terminal_and_exit_code(rt: Runtime) -> None:
    cid, _, _ = rt.start_container(["sleep", "60"])
    proc = in_terminal(rt, "exec", "-t", cid, "sh", "-c", "tty; echo from-exec; exit 4")
    code, out = finish(proc)
    assert code == 4, out
    assert b"/dev/pts/" in out and b"from-exec" in out, out
    assert rt.status(cid) == "running"


def test_run_with_a_terminal_but_no_terminal_around_fails_cleanly(rt: Runtime) -> None:
    """No tty on stdio and no controlling terminal: there is nothing to relay to."""
    cid, bundle = terminal_bundle(rt, ["true"])
    argv = [*rt.argv, "--root", str(rt.root), "run", "--bundle", str(bundle), cid]
    done = subprocess.run(
        argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=TIMEOUT, start_new_session=True, check=False
    )
    assert done.returncode != 0, done
    assert b"/dev/tty" in done.stderr, done
    rt.assert_nothing_left(cid, bundle)


def test_detached_run_with_a_terminal_still_needs_a_console_socket(rt: Runtime) -> None:
    cid, bundle = terminal_bundle(rt, ["true"])
    r = rt.cmd("run", "--detach", "--bundle", str(bundle), cid)
    assert r.returncode != 0, r
    assert "console socket" in r.stderr or "console-socket" in r.stderr, r
    rt.assert_nothing_left(cid, bundle)


def as_user_1000(spec: dict[str, Any]) -> None:
    spec["process"]["terminal"] = True
    spec["process"]["user"] = {"uid": 1000, "gid": 100}


def test_run_terminal_belongs_to_the_process_user(rt: Runtime) -> None:
    """As runc (fixStdioPermissions): the pty's owner is the process's uid, its group devpts' gid=5."""
    cid, bundle, _ = rt.bundle(["sh", "-c", "stat -c %u:%g $(tty)"], edit=as_user_1000)
    code, out = finish(in_terminal(rt, "run", "--bundle", str(bundle), cid))
    assert code == 0, out
    assert b"1000:5" in out, out


def test_exec_tty_belongs_to_the_process_user(rt: Runtime) -> None:
    cid, _, _ = rt.start_container(["sleep", "60"], edit=lambda s: s["process"].update(user={"uid": 1000, "gid": 100}))
    code, out = finish(in_terminal(rt, "exec", "-t", cid, "sh", "-c", "stat -c %u:%g $(tty)"))
    assert code == 0, out
    assert b"1000:5" in out, out


def test_exec_tty_without_a_terminal_around_starts_nothing(rt: Runtime) -> None:
    cid, _, _ = rt.start_container(["sleep", "60"])
    before = rt.cmd("ps", "--format", "json", cid).ok().stdout
    argv = [*rt.argv, "--root", str(rt.root), "exec", "-t", cid, "sh", "-c", "sleep 30"]
    done = subprocess.run(
        argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=TIMEOUT, start_new_session=True, check=False
    )
    assert done.returncode == 255, done
    assert b"/dev/tty" in done.stderr, done
    assert rt.cmd("ps", "--format", "json", cid).ok().stdout == before


def test_console_socket_without_detach_or_terminal_is_refused(rt: Runtime) -> None:
    """runc's check: only a detached process with a terminal hands its pty master to a console socket."""
    socket_path = str(rt.prefix / "unused.sock")
    cid, bundle = terminal_bundle(rt, ["true"])
    r = rt.cmd("run", "--console-socket", socket_path, "--bundle", str(bundle), cid)
    assert r.returncode == 1 and "cannot use console socket" in r.stderr, r
    rt.assert_nothing_left(cid, bundle)
    running, _, _ = rt.start_container(["sleep", "60"])
    for extra in (["--tty"], ["--detach"]):
        r = rt.cmd("exec", "--console-socket", socket_path, *extra, running, "true")
        assert r.returncode == 255 and "cannot use console socket" in r.stderr, r
