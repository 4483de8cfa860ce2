"""The installed skiff-lowlevel's shell fast path (services/lowlevel/skiff-lowlevel): ``start`` and
``delete`` of a plain container without Python; every other case, errors above all, left to Python,
with the same words and exit code as ``python -I -S services/lowlevel/__main__.py``.

The script under test is the checkout's, in an install layout of the test's own (bin/ beside an
editable .pth naming this checkout). ``SKIFF_LOWLEVEL_PYTHON=/bin/false`` tells which path a command
took: one that went to Python fails.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import needs_root
from tests.integration.lowlevel.conftest import Result, Runtime

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "services" / "lowlevel" / "skiff-lowlevel"
MAIN = REPO / "services" / "lowlevel" / "__main__.py"


class ShellRuntime(Runtime):
    """The installed command (the shell path when it applies) beside Python alone, on one --root."""

    def __init__(self, prefix: Path) -> None:
        install = prefix / "install"
        bin_dir = install / "bin"
        site = install / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
        bin_dir.mkdir(parents=True)
        site.mkdir(parents=True)
        (site / "__editable__.skiff-0.pth").write_text(f"{REPO}\n")
        shutil.copy(SCRIPT, bin_dir / "skiff-lowlevel")
        super().__init__([str(bin_dir / "skiff-lowlevel")], prefix)

    def shell_only(self, *args: str) -> Result:
        """The command with no Python to fall back on: it succeeds only on the shell path."""
        return self._with_python("/bin/false", *args)

    def installed(self, *args: str) -> Result:
        return self._with_python(sys.executable, *args)

    def python(self, *args: str) -> Result:
        argv = [sys.executable, "-I", "-S", str(MAIN), "--root", str(self.root), *args]
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
        return Result(argv, done.returncode, done.stdout, done.stderr)

    def _with_python(self, python: str, *args: str) -> Result:
        previous = os.environ.get("SKIFF_LOWLEVEL_PYTHON")
        os.environ["SKIFF_LOWLEVEL_PYTHON"] = python
        try:
            return self.cmd(*args)
        finally:
            if previous is None:
                del os.environ["SKIFF_LOWLEVEL_PYTHON"]
            else:
                os.environ["SKIFF_LOWLEVEL_PYTHON"] = previous


@pytest.fixture
def srt(prefix: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ShellRuntime]:
    needs_root()
    if not Path("/bin/busybox").exists():
        pytest.skip("needs busybox-static (/bin/busybox)")
    os.chmod(prefix, 0o755)
    runtime = ShellRuntime(prefix)
    monkeypatch.setenv("SKIFF_LOWLEVEL_PYTHON", sys.executable)  # for cmd(), and the cleanup's delete --force
    try:
        yield runtime
    finally:
        runtime.cleanup()


def _message(stderr: str) -> str:
    """The log record without its time, which differs between two runs."""
    return re.sub(r'^time="[^"]*" ', "", stderr.strip())


def assert_same_failure(installed: Result, python: Result) -> None:
    assert installed.returncode == python.returncode != 0, (installed, python)
    assert _message(installed.stderr) == _message(python.stderr), (installed, python)
    assert installed.stdout == python.stdout


def test_start_and_delete_run_in_the_shell(srt: ShellRuntime) -> None:
    cid, bundle, _ = srt.bundle(["sleep", "30"])
    srt.create(cid, bundle, out=bundle.parent / "out").ok()
    assert (srt.root / cid / "shell-state").is_file()
    srt.shell_only("start", cid).ok()
    assert srt.status(cid) == "running"
    assert not (srt.root / cid / "exec.fifo").exists()
    srt.cmd("kill", cid, "KILL").ok()
    srt.wait_status(cid, "stopped")
    srt.shell_only("delete", cid).ok()
    srt.assert_nothing_left(cid, bundle)

    # delete --force of a stopped container needs nothing more than delete.
    cid, bundle, _ = srt.bundle(["true"])
    srt.create(cid, bundle, out=bundle.parent / "out").ok()
    srt.shell_only("start", cid).ok()
    srt.wait_status(cid, "stopped")
    srt.shell_only("delete", "--force", cid).ok()
    srt.assert_nothing_left(cid, bundle)


def test_errors_are_pythons(srt: ShellRuntime) -> None:
    unknown = srt.new_id()
    assert_same_failure(srt.installed("start", unknown), srt.python("start", unknown))
    assert_same_failure(srt.installed("delete", unknown), srt.python("delete", unknown))
    assert srt.installed("delete", "--force", unknown).returncode == 0

    cid, bundle, _ = srt.bundle(["sleep", "30"])
    srt.create(cid, bundle, out=bundle.parent / "out").ok()
    srt.shell_only("start", cid).ok()
    # Started twice: the second is refused as Python refuses it.
    again = srt.installed("start", cid)
    assert "cannot start an already running container" in again.stderr
    assert_same_failure(again, srt.python("start", cid))
    # A running container is not deleted without --force, and stays running.
    refused = srt.installed("delete", cid)
    assert "that is not stopped: running" in refused.stderr
    assert_same_failure(refused, srt.python("delete", cid))
    assert srt.status(cid) == "running"
    srt.installed("delete", "--force", cid).ok()
    srt.assert_nothing_left(cid, bundle)

    # A created container whose init died: start says it stopped.
    cid, bundle, _ = srt.bundle(["true"])
    srt.create(cid, bundle, out=bundle.parent / "out").ok()
    srt.cmd("kill", cid, "KILL").ok()
    srt.wait_status(cid, "stopped")
    stopped = srt.installed("start", cid)
    assert "cannot start a container that has stopped" in stopped.stderr
    assert_same_failure(stopped, srt.python("start", cid))
    srt.shell_only("delete", cid).ok()
    srt.assert_nothing_left(cid, bundle)


def test_anything_unusual_goes_to_python(srt: ShellRuntime) -> None:
    cid, bundle, _ = srt.bundle(["true"])
    srt.create(cid, bundle, out=bundle.parent / "out").ok()
    for args in (
        ("--debug", "start", cid),
        ("--systemd-cgroup", "start", cid),
        ("--log", str(srt.prefix / "no-such.log"), "start", cid),  # Python would make the file
        ("--log-format", "xml", "start", cid),
        ("start", cid, "extra"),
        ("start", "--force", cid),
        ("start", "../" + cid),
        ("stat", cid),
    ):
        assert srt.shell_only(*args).returncode != 0, args
    assert srt.status(cid) == "created"
    log = srt.prefix / "runtime.log"
    log.touch()
    srt.shell_only("--log", str(log), "--log-format=json", "start", cid).ok()
    srt.wait_status(cid, "stopped")
    srt.shell_only("--log-format", "text", "delete", "-f", cid).ok()
    assert log.read_text() == ""

    # A hook to run after start or delete: the shell leaves the container to Python.
    def poststop(spec: dict) -> None:
        spec["hooks"] = {"poststop": [{"path": "/bin/true"}]}

    cid, bundle, _ = srt.bundle(["true"], edit=poststop)
    srt.create(cid, bundle, out=bundle.parent / "out").ok()
    assert not (srt.root / cid / "shell-state").exists()
    assert srt.shell_only("start", cid).returncode != 0
    srt.installed("start", cid).ok()
    srt.wait_status(cid, "stopped")
    assert srt.shell_only("delete", cid).returncode != 0
    srt.installed("delete", cid).ok()
    srt.assert_nothing_left(cid, bundle)


def test_start_in_a_user_namespace(srt: ShellRuntime) -> None:
    """The init, root of a user namespace, may not remove the exec fifo from the host's state
    folder: the shell's start removes it itself."""

    def userns(spec: dict) -> None:
        spec["linux"]["namespaces"].append({"type": "user"})
        spec["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 200000, "size": 65536}]
        spec["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 200000, "size": 65536}]
        spec["mounts"] = [m for m in spec["mounts"] if m["destination"] != "/sys/fs/cgroup"]

    cid, bundle, _ = srt.bundle(["sleep", "30"], edit=userns)
    srt.create(cid, bundle, out=bundle.parent / "out").ok()
    srt.shell_only("start", cid).ok()
    assert not (srt.root / cid / "exec.fifo").exists()
    assert srt.status(cid) == "running"
    srt.installed("delete", "--force", cid).ok()
    srt.assert_nothing_left(cid, bundle)
