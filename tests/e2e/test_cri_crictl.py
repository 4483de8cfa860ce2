"""crictl (cri-tools v1.26.1, built outside the project: see scripts/critest) drives skiff-cri end to
end: runp, create, start, exec (plain, with stdin, and -it on a pseudo-terminal), logs, port-forward
(SPDY through the streaming server, into the pod's network namespace), stats, stopp, rmp; nothing is
left. Without a crictl binary the test is skipped: a real skip, it checked nothing."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import select
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.cri_stack import CriStack, fetch
from tests.e2e.test_cri_runtime import cri_stack  # noqa: F401 - the fixture
from tests.support.registry import free_port
from tests.support.tasks import wait_for

CRICTL = Path(os.environ.get("SKIFF_CRICTL", "/work/ext/cri-tools/bin/crictl"))

pytestmark = pytest.mark.skipif(
    not CRICTL.is_file(),
    reason=f"crictl not built at {CRICTL} (cri-tools v1.26.1 into /work/ext/cri-tools, see scripts/critest)")

WEB_PORT = 8080
WEB = f"echo started; mkdir -p /www && echo crictl-web > /www/index.html && exec httpd -f -p {WEB_PORT} -h /www"


class Crictl:
    def __init__(self, socket_path: Path, folder: Path) -> None:
        self.config = folder / "crictl.yaml"  # never /etc/crictl.yaml
        self.config.write_text(f"runtime-endpoint: unix://{socket_path}\nimage-endpoint: unix://{socket_path}\n"
                               "timeout: 60\n")

    def argv(self, *args: str) -> list[str]:
        return [str(CRICTL), "--config", str(self.config), *args]

    def run(self, *args: str, stdin: bytes | None = None, ok: bool = True) -> subprocess.CompletedProcess[bytes]:
        done = subprocess.run(self.argv(*args), input=stdin, capture_output=True, timeout=120)
        if ok:
            assert done.returncode == 0, f"crictl {' '.join(args)}: {done.stderr.decode()}"
        return done

    def out(self, *args: str) -> str:
        return self.run(*args).stdout.decode().strip()



def exec_on_terminal(crictl: Crictl, container: str, typed: bytes) -> tuple[bytes, int]:
    """``crictl exec -it`` on a pseudo-terminal of its own, ``typed`` once the shell prompts: what
    it showed until it ended, and its exit status."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: crictl on the terminal's slave side
        os.execv(str(CRICTL), crictl.argv("exec", "-it", container, "sh"))
    seen = b""
    typed_yet = False
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:  # EIO: crictl ended, its terminal closed
                    break
                if not chunk:
                    break
                seen += chunk
            if not typed_yet and b"#" in seen:  # the shell's prompt: it reads the terminal now
                os.write(fd, typed)
                typed_yet = True
        else:
            os.kill(pid, signal.SIGKILL)
            raise AssertionError(f"crictl exec -it did not end within 60 s; it showed {seen!r}")
        _, status = os.waitpid(pid, 0)
        return seen, os.waitstatus_to_exitcode(status)
    finally:
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)


def test_crictl_drives_a_pod_end_to_end(cri_stack: CriStack, tmp_path: Path) -> None:  # noqa: F811
    crictl = Crictl(cri_stack.socket, tmp_path)
    assert "RuntimeName:  skiff" in crictl.out("version")
    logs = tmp_path / "logs"
    logs.mkdir()
    pod_file = tmp_path / "pod.json"
    pod_file.write_text(json.dumps({
        "metadata": {"name": "crictl-pod", "namespace": "default", "uid": "crictl-pod-uid", "attempt": 0},
        "hostname": "crictl-pod", "log_directory": str(logs),
        "linux": {"cgroup_parent": f"/{cri_stack.cgroup_parent}/pod-crictl"},
    }))
    container_file = tmp_path / "container.json"
    container_file.write_text(json.dumps({
        "metadata": {"name": "web"}, "image": {"image": "busybox:latest"},
        "command": ["sh", "-c", WEB], "log_path": "web.log", "linux": {},
    }))

    pod = crictl.out("runp", str(pod_file))
    assert json.loads(crictl.out("inspectp", pod))["status"]["state"] == "SANDBOX_READY"
    container = crictl.out("create", "--no-pull", pod, str(container_file), str(pod_file))
    crictl.run("start", container)
    wait_for(lambda: json.loads(crictl.out("inspect", container))["status"]["state"] == "CONTAINER_RUNNING",
             30, "the container running")
    assert container in crictl.out("ps", "-q")

    # logs, from the CRI log file kubelet would read
    wait_for(lambda: "started" in crictl.out("logs", container), 30, "the container's first line in its log")

    # exec: output and exit status, stdin, and a terminal
    plain = crictl.run("exec", container, "sh", "-c", "echo out; echo err >&2; exit 3", ok=False)
    assert plain.stdout == b"out\n" and b"err\n" in plain.stderr
    assert plain.returncode != 0 and b"exit code 3" in plain.stderr
    assert crictl.run("exec", "-i", container, "cat", stdin=b"through stdin\n").stdout == b"through stdin\n"
    seen, code = exec_on_terminal(crictl, container, b"tty && echo hi-$((40+2)); exit 7\n")
    assert b"/dev/pts/" in seen and b"hi-42" in seen, seen
    assert code != 0 and b"exit code 7" in seen, seen

    # port-forward: a local port to the pod's port 8080, through SPDY
    local = free_port()
    forward = subprocess.Popen(crictl.argv("port-forward", pod, f"{local}:{WEB_PORT}"),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert wait_for(lambda: fetch(f"http://127.0.0.1:{local}/index.html"), 30,
                        "the pod's web page through port-forward") == "crictl-web"
        assert fetch(f"http://127.0.0.1:{local}/index.html") == "crictl-web"  # a second connection
    finally:
        forward.terminate()
        forward.wait(10)
        if forward.stdout is not None:
            forward.stdout.close()

    # stats
    stats = json.loads(crictl.out("stats", "-o", "json", "--id", container))["stats"]
    assert [s["attributes"]["id"] for s in stats] == [container]
    assert int(stats[0]["memory"]["workingSetBytes"]["value"]) > 0

    # stopp, rmp: nothing left
    crictl.run("stopp", pod)
    assert json.loads(crictl.out("inspectp", pod))["status"]["state"] == "SANDBOX_NOTREADY"
    crictl.run("rmp", pod)
    assert crictl.out("pods", "-q") == ""
    assert crictl.out("ps", "-a", "-q") == ""
    assert crictl.run("inspectp", pod, ok=False).returncode != 0
