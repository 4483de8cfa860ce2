"""Exec and attach as dockerd 20.10 serves them (issue 11), with docker-py and the docker CLI: framing by
the start's Tty, detach keys, a start that fails, exec users by name, attach with stdin alone or to a
stopped container's logs, short execs whose output and exit code are never lost, and kill that answers
once the container has exited."""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import time

import docker
import pytest

from tests.e2e.stack import Stack
from tests.support.tasks import wait_for

CTRL_P, CTRL_Q = b"\x10", b"\x11"
HAVE_CLI = shutil.which("docker") is not None and shutil.which("script") is not None


def _raw(sock: object) -> socket.socket:
    return getattr(sock, "_sock", sock)  # type: ignore[return-value]


def _read_frame(sock: socket.socket) -> tuple[int, bytes]:
    header = _read_exactly(sock, 8)
    return header[0], _read_exactly(sock, int.from_bytes(header[4:], "big"))


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, f"stream ended after {data!r}"
        data += chunk
    return data


def _assert_detached(sock: socket.socket) -> None:
    """The stream ends for the client: a send breaks the pipe or a read gives the end."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            sock.sendall(b"make sure the socket is closed\n")
        except OSError:
            return
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            if sock.recv(128) == b"":
                return
        except (TimeoutError, OSError):
            continue
    raise AssertionError("the stream did not end after the detach keys")


def _send_keys(sock: socket.socket, *keys: bytes) -> None:
    for key in keys:
        sock.sendall(key)
        time.sleep(0.2)  # typed one at a time, as a person does (the keys may span reads)


def _cli_env(stack: Stack) -> dict[str, str]:
    return dict(os.environ, DOCKER_HOST=stack.base_url, DOCKER_CONFIG=str(stack.prefix / "docker-config"))


def _under_pty(stack: Stack, command: str, typed: list[bytes]) -> subprocess.CompletedProcess[bytes]:
    """The CLI with a terminal (script(1)), keys typed with pauses, then the input left open a while."""
    proc = subprocess.Popen(["script", "-qec", command, "/dev/null"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_cli_env(stack))
    assert proc.stdin is not None
    try:
        time.sleep(1.0)  # the CLI attaches and sets its terminal raw before the keys come
        for key in typed:
            proc.stdin.write(key)
            proc.stdin.flush()
            time.sleep(0.3)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_exec_start_tty_decides_framing(client: docker.DockerClient) -> None:
    api = client.api
    box = api.create_container("busybox", "cat", detach=True, stdin_open=True)
    api.start(box)
    exec_id = api.exec_create(box, ["printf", "yay"], tty=True)["Id"]
    sock = _raw(api.exec_start(exec_id, socket=True))  # docker-py starts with Tty false
    try:
        assert _read_frame(sock) == (1, b"yay")
    finally:
        sock.close()
    cmd = 'sh -c "echo hello out; sleep 0.3; echo hello err >&2"'
    assert api.exec_start(api.exec_create(box, cmd, tty=True)) == b"hello out\r\nhello err\r\n"
    assert api.exec_start(api.exec_create(box, cmd, tty=True), demux=True) == (b"hello out\r\nhello err\r\n", None)
    chunks = list(api.exec_start(api.exec_create(box, cmd, tty=True), stream=True, demux=True))
    assert b"".join(out for out, _ in chunks) == b"hello out\r\nhello err\r\n"
    # The reverse: a pipe exec started with Tty true is raw, and (as dockerd) without its stderr.
    assert api.exec_start(api.exec_create(box, cmd), tty=True) == b"hello out\n"
    assert api.exec_start(api.exec_create(box, cmd), demux=True) == (b"hello out\n", b"hello err\n")
    api.remove_container(box, force=True)


def test_exec_detach_keys(client: docker.DockerClient, stack: Stack) -> None:
    api = client.api
    box = api.create_container("busybox", "cat", detach=True, stdin_open=True)
    api.start(box)
    default = api.exec_create(box, "cat", stdin=True, tty=True)["Id"]
    sock = _raw(api.exec_start(default, tty=True, socket=True))
    try:
        sock.sendall(b"typed\r")
        assert b"typed" in _read_exactly(sock, 5)
        _send_keys(sock, CTRL_P, CTRL_Q)
        _assert_detached(sock)
    finally:
        sock.close()
    assert api.exec_inspect(default)["Running"] is True  # the process runs on
    # Keys from the client's config, sent as `detachKeys` in the create body: one key here.
    api._general_configs["detachKeys"] = "ctrl-x,y"
    try:
        custom = api.exec_create(box, "cat", stdin=True, tty=True)["Id"]
    finally:
        del api._general_configs["detachKeys"]
    assert api.exec_inspect(custom)["DetachKeys"] == base64.b64encode(b"\x18y").decode()
    sock = _raw(api.exec_start(custom, tty=True, socket=True))
    try:
        _send_keys(sock, CTRL_P, CTRL_Q, b"\x18", b"y")  # the default keys mean nothing to this exec
        _assert_detached(sock)
    finally:
        sock.close()
    assert api.exec_inspect(custom)["Running"] is True
    with pytest.raises(docker.errors.APIError) as bad:
        api.exec_create(box, "cat", stdin=True, tty=True, detach_keys="ctrl-Z")
    assert bad.value.status_code == 400 and "Invalid escape keys (ctrl-Z) provided" in str(bad.value)
    if HAVE_CLI:
        run = _under_pty(stack, f"docker exec -it --detach-keys ctrl-x,x {box['Id'][:12]} cat", [b"abc", b"\x18", b"x"])
        assert b"abc" in run.stdout, (run.stdout, run.stderr)
        assert b"read escape sequence" in run.stdout + run.stderr
    top = api.top(box, ps_args="")
    assert sum(1 for row in top["Processes"] if row[-1] == "cat") >= 3  # init and the detached execs
    api.remove_container(box, force=True)


def test_attach_stdin_only_and_detach_keys(client: docker.DockerClient, stack: Stack) -> None:
    api = client.api
    box = api.create_container("busybox", "cat", detach=True, stdin_open=True, tty=True)
    api.start(box)
    # stdin alone (no stdout, no stderr): kept open, fed to the process, until the detach keys.
    sock = _raw(api.attach_socket(box, {"stdin": True, "stream": True}))
    try:
        sock.sendall(b"first\r")
        _send_keys(sock, CTRL_P, CTRL_Q)
        _assert_detached(sock)
    finally:
        sock.close()
    api._general_configs["detachKeys"] = "ctrl-p"
    try:
        sock = _raw(api.attach_socket(box, {"stdin": True, "stdout": True, "stream": True}))
    finally:
        del api._general_configs["detachKeys"]
    try:
        sock.sendall(b"second\r")
        assert b"second" in _read_exactly(sock, 6)
        _send_keys(sock, CTRL_P)
        _assert_detached(sock)
    finally:
        sock.close()
    assert api.inspect_container(box)["State"]["Running"] is True
    logs = api.logs(box)
    assert b"first" in logs and b"second" in logs  # both reached cat, which echoed them on its tty
    with pytest.raises(docker.errors.APIError) as bad:
        api.attach_socket(box, {"stdin": True, "stream": True, "detachKeys": "ctrl-"})
    assert bad.value.status_code == 400 and "Invalid detach keys (ctrl-) provided" in str(bad.value)
    if HAVE_CLI:
        run = _under_pty(stack, f"docker attach {box['Id'][:12]}", [b"third\r", CTRL_P, CTRL_Q])
        assert b"read escape sequence" in run.stdout + run.stderr, (run.stdout, run.stderr)
        assert api.inspect_container(box)["State"]["Running"] is True
    api.remove_container(box, force=True)
    # Without OpenStdin, stdin alone gives nothing to stream: the answer ends at once, as dockerd's.
    closed = api.create_container("busybox", ["sleep", "300"])
    api.start(closed)
    sock = _raw(api.attach_socket(closed, {"stdin": True, "stream": True}))
    try:
        sock.settimeout(10)
        assert sock.recv(1) == b""
    finally:
        sock.close()
    assert api.inspect_container(closed)["State"]["Running"] is True
    api.remove_container(closed, force=True)


def test_exec_of_missing_binary_runs_with_126(client: docker.DockerClient, stack: Stack) -> None:
    box = client.containers.run("busybox", ["sleep", "300"], detach=True)
    code, out = box.exec_run("non-existent")
    assert code == 126
    assert out.startswith(b"OCI runtime exec failed: ") and b'"non-existent": executable file not found in $PATH' \
        in out, out
    api = client.api
    exec_id = api.exec_create(box.id, ["/nowhere/tool"])["Id"]
    with pytest.raises(docker.errors.APIError) as bad:
        api.exec_start(exec_id, detach=True)  # detached: the failure is the answer
    assert bad.value.status_code == 400
    state = api.exec_inspect(exec_id)
    assert state["ExitCode"] == 126 and state["Running"] is False
    with pytest.raises(docker.errors.APIError) as again:
        api.exec_start(exec_id)
    assert again.value.status_code == 409
    code, out = box.exec_run("pwd", workdir="/no/such/dir")
    assert code == 126 and out.startswith(b"OCI runtime exec failed"), out
    if shutil.which("docker") is not None:
        run = subprocess.run(["docker", "exec", box.id, "non-existent"], env=_cli_env(stack), capture_output=True,
                             text=True, timeout=60)
        assert run.returncode == 126, (run.stdout, run.stderr)
        assert "executable file not found in $PATH" in run.stdout + run.stderr
    box.remove(force=True)


def test_exec_user_by_name(client: docker.DockerClient) -> None:
    box = client.containers.run("busybox", ["sleep", "300"], detach=True)
    assert box.exec_run("id -u", user="nobody") == (0, b"65534\n")
    assert box.exec_run("id -un", user="daemon") == (0, b"daemon\n")
    # The groups that list the user are its additional ones (users:x:100:skiff), by name or by uid.
    assert box.exec_run("id -G", user="skiff") == (0, b"1000 100\n")
    assert box.exec_run("id -G", user="1000") == (0, b"1000 100\n")
    assert box.exec_run("id", user="nobody:users") == (0, b"uid=65534(nobody) gid=100(users)\n")
    assert box.exec_run("id -u", user="4242:4243") == (0, b"4242\n")
    code, out = box.exec_run("id", user="postgres")
    assert code == 126 and out == b"unable to find user postgres: no matching entries in passwd file\r\n"
    code, out = box.exec_run("id", user="nobody:nosuchgroup")
    assert code == 126 and b"unable to find group nosuchgroup" in out
    box.remove(force=True)


def test_attach_to_stopped_container(client: docker.DockerClient, stack: Stack) -> None:
    api = client.api
    box = api.create_container("busybox", ["sh", "-c", "echo hello; echo oops >&2"])
    api.start(box)
    api.wait(box)
    assert api.attach(box, stream=False, logs=True) == b"hello\noops\n"
    assert api.attach(box, stream=False, logs=True, stderr=False) == b"hello\n"
    # logs and stream: the logs, then the next run's output (docker start -a attaches, then starts).
    sock = _raw(api.attach_socket(box, {"logs": 1, "stream": 1, "stdout": 1, "stderr": 1}))
    try:
        logged = [_read_frame(sock), _read_frame(sock)]
        api.start(box)
        live = [_read_frame(sock), _read_frame(sock)]
        sock.settimeout(15)
        assert sock.recv(1) == b""  # its exit ends the stream
    finally:
        sock.close()
    assert logged == live == [(1, b"hello\n"), (2, b"oops\n")]
    if shutil.which("docker") is not None:
        again = subprocess.run(["docker", "start", "-a", box["Id"]], env=_cli_env(stack), capture_output=True,
                               text=True, timeout=60)
        assert again.returncode == 0 and (again.stdout, again.stderr) == ("hello\n", "oops\n"), again
        reading = api.create_container("busybox", ["sh", "-c", "read l; echo got:$l"], stdin_open=True)
        api.start(reading)
        api.kill(reading)  # exited: its stdin waits for the next start
        piped = subprocess.run(["docker", "start", "-ai", reading["Id"]], input="abc\n", env=_cli_env(stack),
                               capture_output=True, text=True, timeout=60)
        assert piped.returncode == 0 and piped.stdout == "got:abc\n", piped
        api.remove_container(reading)
    api.remove_container(box)


def test_short_exec_output_and_exit_code_are_never_lost(client: docker.DockerClient) -> None:
    api = client.api
    box = api.create_container("busybox", "cat", detach=True, stdin_open=True)
    api.start(box)
    for round_ in range(25):
        exec_id = api.exec_create(box, "whoami")["Id"]
        assert api.exec_start(exec_id) == b"root\n", round_
        assert api.exec_inspect(exec_id)["ExitCode"] == 0, round_  # set before the stream ended
        exec_id = api.exec_create(box, 'sh -c "echo out; echo err >&2; exit 3"')["Id"]
        assert api.exec_start(exec_id, demux=True) == (b"out\n", b"err\n"), round_
        assert api.exec_inspect(exec_id)["ExitCode"] == 3, round_
        exec_id = api.exec_create(box, "whoami", user="nosuch")["Id"]  # fails at once, right after the 101
        assert api.exec_start(exec_id).startswith(b"unable to find user nosuch"), round_
    # An exec with stdin: its stdin writer attaching first takes none of the output.
    for round_ in range(10):
        exec_id = api.exec_create(box, ["echo", "early"], stdin=True)["Id"]
        sock = _raw(api.exec_start(exec_id, socket=True))
        try:
            assert _read_frame(sock) == (1, b"early\n"), round_
        finally:
            sock.close()
    api.remove_container(box, force=True)


def test_kill_answers_once_exited(client: docker.DockerClient, stack: Stack) -> None:
    api = client.api
    for signal_ in (None, "SIGKILL", "KILL", 9):
        box = api.create_container("busybox", ["sleep", "300"])
        api.start(box)
        if signal_ is None:
            api.kill(box)
        else:
            api.kill(box, signal_)
        state = api.inspect_container(box)["State"]
        assert (state["Status"], state["ExitCode"], state["Running"]) == ("exited", 137, False), signal_
        api.remove_container(box)  # no 409: it is not running any more
    # Another signal is sent and answered at once (a shell that traps it exits on its own time).
    box = api.create_container("busybox", ["sh", "-c", "trap 'sleep 1; exit 7' USR1; while true; do sleep 0.1; done"])
    api.start(box)
    wait_for(lambda: "sleep" in str(api.top(box)["Processes"]), 10, "the loop runs")
    api.kill(box, "SIGUSR1")
    assert api.wait(box, timeout=15)["StatusCode"] == 7
    if HAVE_CLI:
        env = _cli_env(stack)
        subprocess.run(["docker", "run", "-d", "--name", "killme", "busybox", "sleep", "300"], env=env, check=True,
                       capture_output=True, timeout=60)
        killed = subprocess.run(["docker", "kill", "killme"], env=env, capture_output=True, text=True, timeout=60)
        assert killed.returncode == 0, killed.stderr
        status = subprocess.run(["docker", "inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", "killme"],
                                env=env, capture_output=True, text=True, timeout=60)
        assert status.stdout == "exited 137\n", status.stderr
        assert subprocess.run(["docker", "rm", "killme"], env=env, capture_output=True, timeout=60).returncode == 0
    api.remove_container(box)


def test_attach_to_a_paused_container_is_a_conflict(client: docker.DockerClient) -> None:
    """The daemon's attach stream refuses it (the apiserver asks no inspect first), and so does an
    attach without a stream; both name the container as the client did."""
    c = client.containers.run("busybox", ["sleep", "300"], detach=True)
    try:
        c.pause()
        for stream in (True, False):
            with pytest.raises(docker.errors.APIError) as caught:
                client.api.attach(c.name, stream=stream, logs=not stream)
            assert caught.value.status_code == 409, (stream, caught.value)
            assert f"container {c.name} is paused, unpause the container before attach" in str(caught.value)
        c.unpause()
        sock = client.api.attach_socket(c.id, params={"stdout": 1, "stream": 1})
        _raw(sock).close()  # attached once running again
    finally:
        c.remove(force=True)
