"""The runtime driven through its command line, as a shim would: one helper shared by test_runtime_*.

Every container a test makes is registered, and the finalizer removes it even when the test fails:
``delete --force``, then any process left in its cgroups is killed and the cgroup folders removed,
then any mount under the test's prefix is detached. Container stdio goes to files, never to a pipe
that a test would wait on to EOF (a detached init inherits the caller's stdout).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import needs_root
from tests.support.busybox import build_rootfs, default_spec, write_spec

CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_PARENT = "/skiff-test"
TIMEOUT = 30.0


def wait_until(check: Callable[[], Any], seconds: float = 10.0, interval: float = 0.01) -> Any:
    """Poll ``check`` until it returns something true, or fail with a clear message at the deadline."""
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            return value
        time.sleep(interval)


class Result:
    __slots__ = ("argv", "returncode", "stdout", "stderr")

    def __init__(self, argv: list[str], returncode: int, stdout: str, stderr: str) -> None:
        self.argv = argv
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr

    def __repr__(self) -> str:
        return f"Result(rc={self.returncode}, argv={self.argv!r}, stdout={self.stdout!r}, stderr={self.stderr!r})"

    def ok(self) -> Result:
        assert self.returncode == 0, repr(self)
        return self


def cgroup_dirs(cgroups_path: str) -> list[Path]:
    """Every folder of ``cgroups_path`` in every hierarchy mounted under /sys/fs/cgroup."""
    found = []
    for hierarchy in CGROUP_ROOT.iterdir():
        if hierarchy.is_symlink():
            continue
        d = hierarchy / cgroups_path.lstrip("/")
        if d.is_dir():
            found.append(d)
    return found


def cgroup_file(subsystem: str, cgroups_path: str, name: str) -> str:
    return (CGROUP_ROOT / subsystem / cgroups_path.lstrip("/") / name).read_text().strip()


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def processes_rooted_in(path: Path) -> list[int]:
    """Host pids whose root folder lies in ``path`` (a container's leftovers)."""
    found = []
    target = str(path)
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            root = os.readlink(f"/proc/{name}/root")
        except OSError:
            continue
        if root == target or root.startswith(target + "/"):
            found.append(int(name))
    return found


def mounts_under(path: Path) -> list[str]:
    needle = str(path)
    with open("/proc/self/mountinfo") as f:
        return [line for line in f if needle in line]


class Runtime:
    """One test's view of the runtime: its own --root, bundles under its own prefix."""

    def track(self, pid: int) -> None:
        """A process the teardown kills if it is still there: held by a pidfd, taken now while the
        pid is surely it, since the number may belong to another process by teardown time."""
        with contextlib.suppress(ProcessLookupError):
            self.pidfds.append(os.pidfd_open(pid))

    def __init__(self, argv: list[str], prefix: Path) -> None:
        self.argv = argv
        self.prefix = prefix
        self.root = prefix / "state"
        self.ids: list[str] = []
        self.cgroup_paths: list[str] = []
        self.pidfds: list[int] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self.is_runc = os.path.basename(argv[0]) in ("runc", "crun")

    # ---- commands -------------------------------------------------------------------------------
    def cmd(
        self,
        *args: str,
        timeout: float = TIMEOUT,
        input: bytes | None = None,
        global_args: tuple[str, ...] = (),
        cwd: Path | None = None,
    ) -> Result:
        argv = [*self.argv, "--root", str(self.root), *global_args, *args]
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            done = subprocess.run(
                argv,
                input=input,
                stdin=None if input is not None else subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                timeout=timeout,
                cwd=cwd,
                check=False,
            )
            out.seek(0)
            err.seek(0)
            return Result(
                argv, done.returncode, out.read().decode(errors="replace"), err.read().decode(errors="replace")
            )

    def popen(self, *args: str, stdout: Path) -> subprocess.Popen[bytes]:
        with open(stdout, "wb") as f:
            proc = subprocess.Popen(
                [*self.argv, "--root", str(self.root), *args], stdin=subprocess.DEVNULL, stdout=f, stderr=f
            )
        self.procs.append(proc)
        return proc

    def state(self, cid: str) -> dict[str, Any]:
        r = self.cmd("state", cid).ok()
        return json.loads(r.stdout)

    def status(self, cid: str) -> str | None:
        r = self.cmd("state", cid)
        return json.loads(r.stdout)["status"] if r.returncode == 0 else None

    def wait_status(self, cid: str, wanted: str, seconds: float = 15.0) -> None:
        got = wait_until(lambda: self.status(cid) == wanted, seconds, 0.02)
        assert got, f"{cid} never reached {wanted}: now {self.status(cid)}"

    # ---- bundles --------------------------------------------------------------------------------
    def new_id(self) -> str:
        cid = f"skiff-t-{uuid.uuid4().hex[:12]}"
        self.ids.append(cid)
        return cid

    def bundle(
        self, args: list[str], *, cid: str | None = None, edit: Callable[[dict[str, Any]], None] | None = None
    ) -> tuple[str, Path, dict[str, Any]]:
        """A fresh id and bundle: busybox rootfs, a tmpfs on /tmp, cgroupsPath /skiff-test/<id>."""
        cid = cid or self.new_id()
        bundle = self.prefix / "bundles" / cid
        bundle.mkdir(parents=True)
        build_rootfs(bundle / "rootfs")
        spec = default_spec(args)
        spec["mounts"].append(
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"]}
        )
        spec["linux"]["cgroupsPath"] = f"{CGROUP_PARENT}/{cid}"
        self.cgroup_paths.append(spec["linux"]["cgroupsPath"])
        if edit is not None:
            edit(spec)
        write_spec(bundle, spec)
        return cid, bundle, spec

    def create(self, cid: str, bundle: Path, *extra: str, out: Path | None = None) -> Result:
        """``create`` with the container's stdio on a file (or /dev/null): nothing waits on a pipe."""
        if out is None:
            return self.cmd("create", "--bundle", str(bundle), *extra, cid)
        argv = [*self.argv, "--root", str(self.root), "create", "--bundle", str(bundle), *extra, cid]
        # The runtime's stderr is the container's: both go to the file; on failure it holds the reason.
        with open(out, "ab") as f:
            start = f.tell()
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=f, stderr=f, timeout=TIMEOUT, check=False)
        with open(out, "rb") as f:
            f.seek(start)
            text = f.read().decode(errors="replace")
        return Result(argv, done.returncode, "", text if done.returncode else "")

    def start_container(self, args: list[str], **kw: Any) -> tuple[str, Path, dict[str, Any]]:
        """A running container (create + start), its output in ``<bundle>/out``."""
        out_path = kw.pop("out", None)
        cid, bundle, spec = self.bundle(args, **kw)
        self.create(cid, bundle, out=out_path or bundle.parent / f"{cid}.out").ok()
        self.cmd("start", cid).ok()
        return cid, bundle, spec

    # ---- checks ---------------------------------------------------------------------------------
    def assert_nothing_left(self, cid: str, bundle: Path, cgroups_path: str | None = None) -> None:
        assert not (self.root / cid).exists(), f"state folder of {cid} left behind"
        cgroups_path = cgroups_path or f"{CGROUP_PARENT}/{cid}"
        assert not cgroup_dirs(cgroups_path), f"cgroup folders left: {cgroup_dirs(cgroups_path)}"
        assert not mounts_under(bundle), f"mounts left: {mounts_under(bundle)}"
        assert not processes_rooted_in(bundle), f"processes left: {processes_rooted_in(bundle)}"

    # ---- cleanup --------------------------------------------------------------------------------
    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        for cid in self.ids:
            with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                self.cmd("delete", "--force", cid, timeout=20)
        for fd in self.pidfds:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(fd, signal.SIGKILL)
            os.close(fd)
        for path in self.cgroup_paths:
            remove_cgroup(path)
        for pid in processes_rooted_in(self.prefix):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for line in reversed(mounts_under(self.prefix)):
            mountpoint = line.split()[4]
            subprocess.run(["umount", "-l", mountpoint], check=False, capture_output=True, timeout=10)
        remove_empty_parent()


def remove_empty_parent() -> None:
    """The shared /skiff-test parent goes when no test uses it (rmdir refuses while one does)."""
    for hierarchy in CGROUP_ROOT.iterdir():
        with contextlib.suppress(OSError):
            (hierarchy / CGROUP_PARENT.lstrip("/")).rmdir()


def remove_cgroup(cgroups_path: str) -> None:
    """Kill what is left in every hierarchy's folder of ``cgroups_path`` and remove it, leaves first."""
    for d in cgroup_dirs(cgroups_path):
        freezer = d / "freezer.state"
        if freezer.exists():
            with contextlib.suppress(OSError):
                freezer.write_text("THAWED")
        for sub in sorted(d.rglob("*"), key=lambda p: len(p.parts), reverse=True) + [d]:
            if not sub.is_dir():
                continue
            procs = sub / "cgroup.procs"
            deadline = time.monotonic() + 5
            while True:
                try:
                    pids = [int(x) for x in procs.read_text().split()]
                except OSError:
                    pids = []
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                try:
                    sub.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.02)


@pytest.fixture
def rt(runtime_argv: list[str], prefix: Path) -> Iterator[Runtime]:
    needs_root()
    if not Path("/bin/busybox").exists():
        pytest.skip("needs busybox-static (/bin/busybox)")
    # mkdtemp makes the prefix 0700: a container's user namespace root must be able to walk it.
    os.chmod(prefix, 0o755)
    runtime = Runtime(runtime_argv, prefix)
    try:
        yield runtime
    finally:
        runtime.cleanup()
