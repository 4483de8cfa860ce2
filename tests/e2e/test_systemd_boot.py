"""Skiff's units under a real systemd as PID 1 (scripts/dev-systemd-boot: private namespaces over a
throwaway root with the host's /usr): deploy/install.sh installs them for this checkout, skiff.socket
starts the apiserver (and through it the daemon and highlevel) on the first connection, each
service's READY=1 and STOPPING=1 reach systemd, a container runs through the activated socket,
`systemctl stop` ends them cleanly, uninstall removes the units and the socket; nothing of the
boot is left on the host."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import needs_root
from tests.e2e.stack import busybox_archive

REPO = Path(__file__).resolve().parents[2]
BOOT = REPO / "scripts" / "dev-systemd-boot"
UNITS = ["skiff.socket", "skiff-apiserver.service", "skiff-daemon.service", "skiff-highlevel.service"]
SERVICES = UNITS[1:]


def _inside(pid: int, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["nsenter", f"--target={pid}", "--all", "--root", "--wd", *argv],
                          capture_output=True, text=True, timeout=timeout)


def _ok(pid: int, *argv: str) -> str:
    done = _inside(pid, *argv)
    assert done.returncode == 0, f"{argv}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _states(pid: int) -> list[str]:
    return _inside(pid, "systemctl", "is-active", *UNITS).stdout.split()


def _notifications(pid: int) -> str:
    """What the services told systemd (PID 1 logs each message at debug level)."""
    return _ok(pid, "journalctl", "--no-pager", "-o", "cat", "_PID=1")


def _docker(pid: int, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    host = f"unix:///proc/{pid}/root/run/skiff/skiff.sock"
    return subprocess.run(["docker", "-H", host, *argv], capture_output=True, text=True, timeout=timeout)


def _mount_ns_members(ns: str) -> list[str]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/ns/mnt") == ns:
                    found.append(entry)
            except OSError:
                pass
    return found


def test_units_installed_and_socket_activated_under_systemd_as_pid1(prefix: Path) -> None:
    needs_root()
    for tool in ("nsenter", "docker"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed")
    if not Path("/lib/systemd/systemd").exists():
        pytest.skip("systemd (Debian package systemd) not installed")
    if not (REPO / ".venv" / "bin" / "skiff-apiserver").exists():
        pytest.skip("no .venv with the console scripts: the units' ExecStart= would not exist")
    archive = busybox_archive(prefix)
    root = prefix / "root"
    # Debug level: PID 1 logs every sd_notify message it gets, which is what shows READY=1 and STOPPING=1.
    boot = subprocess.Popen([sys.executable, str(BOOT), str(root), "--log-level", "debug"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    mount_ns = cgroup = ""
    try:
        line = boot.stdout.readline()  # the script gives up by itself after 60 s
        assert line.startswith("ready pid="), f"{line}{boot.stderr.read() if boot.poll() is not None else ''}"
        fields = dict(part.split("=", 1) for part in line.split()[1:])
        pid, cgroup = int(fields["pid"]), fields["cgroup"]
        mount_ns = os.readlink(f"/proc/{pid}/ns/mnt")
        assert _ok(pid, "cat", "/proc/1/comm").strip() == "systemd"

        assert "installed:" in _ok(pid, str(REPO / "deploy" / "install.sh"))
        assert f"ExecStart={REPO}/.venv/bin/skiff-apiserver" in _ok(pid, "systemctl", "cat", "skiff-apiserver")
        _ok(pid, "systemctl", "enable", *UNITS)
        _ok(pid, "systemctl", "start", "skiff.socket")
        assert _states(pid) == ["active", "inactive", "inactive", "inactive"]
        sock = Path(f"/proc/{pid}/root/run/skiff/skiff.sock")
        assert sock.stat().st_mode & 0o777 == 0o660
        assert _ok(pid, "stat", "-c", "%U:%G", "/run/skiff/skiff.sock").strip() == "root:skiff"

        # The first connection starts the apiserver, which needs the daemon, which needs highlevel.
        version = _docker(pid, "version", "--format", "{{.Server.Version}}")
        assert version.returncode == 0, version.stderr
        assert _states(pid) == ["active"] * 4  # Type=notify: active only once READY=1 came
        told = _notifications(pid)
        for unit in SERVICES:
            assert f"{unit}: Got notification message from PID" in told
            assert any(unit in line and "READY=1" in line for line in told.splitlines()), told[-3000:]
        status = _ok(pid, "systemctl", "show", "-p", "StatusText", "--value", "skiff-daemon")
        assert status.strip() == "0 containers running"

        loaded = _docker(pid, "load", "-i", str(archive))
        assert loaded.returncode == 0, loaded.stderr
        run = _docker(pid, "run", "--rm", "busybox", "echo", "ok")
        assert run.returncode == 0 and run.stdout == "ok\n", run.stderr

        # kubelet's endpoint: skiff-cri beside the Docker stack, on highlevel alone.
        _ok(pid, "systemctl", "enable", "--now", "skiff-cri")
        assert _inside(pid, "systemctl", "is-active", "skiff-cri").stdout.split() == ["active"]
        assert any("skiff-cri.service" in line and "READY=1" in line for line in _notifications(pid).splitlines())
        _ok(pid, "test", "-S", "/run/skiff/cri.sock")
        _ok(pid, "systemctl", "stop", "skiff-cri")

        _ok(pid, "systemctl", "stop", *UNITS)
        assert _states(pid) == ["inactive"] * 4
        for unit in SERVICES:
            shown = _ok(pid, "systemctl", "show", "-p", "Result", "-p", "ExecMainStatus", unit)
            assert sorted(shown.split()) == ["ExecMainStatus=0", "Result=success"], (unit, shown)
        told = _notifications(pid)
        for unit in SERVICES:
            assert any(unit in line and "STOPPING=1" in line for line in told.splitlines()), told[-3000:]

        assert "uninstalled:" in _ok(pid, str(REPO / "deploy" / "install.sh"), "uninstall")
        listed = _inside(pid, "systemctl", "list-unit-files", "skiff*")  # exits 1 when it lists none
        assert "0 unit files listed" in listed.stdout, listed.stdout
        assert not list((root / "etc" / "systemd" / "system").glob("**/skiff*"))
        assert not sock.exists()  # RemoveOnStop=yes
    finally:
        if boot.poll() is None:
            boot.send_signal(signal.SIGTERM)
        try:
            out, err = boot.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            boot.kill()
            out, err = boot.communicate(timeout=10)
    assert boot.returncode == 0 and out.splitlines()[-1] == "clean", f"{out}\n{err}"
    # Checked here too, not only by the script: no process, mount, cgroup or folder of the boot left.
    assert mount_ns and _mount_ns_members(mount_ns) == []
    assert [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if str(root) in line] == []
    leftover_cgroups = [d for d, _, _ in os.walk("/sys/fs/cgroup") if cgroup in d]
    assert leftover_cgroups == []
    assert not root.exists()
