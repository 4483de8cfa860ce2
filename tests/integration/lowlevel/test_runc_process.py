"""Process and filesystem behaviour runc's own suite (mask.bats, cwd.bats, hooks.bats at v1.1.5)
and the OCI runtime-tools validation suite check, passing with skiff-lowlevel and with runc.

procfs or sysfs onto a symlink of the rootfs is refused; createContainer hooks run from the root
filesystem; the working folder is entered while still privileged (and again as the user when
only the user may enter it); a FIFO among linux.devices, a config with no namespaces, and a
root.path of "." with shared root propagation all run; a read-only /dev is filled before it turns
read-only; ``--debug exec`` names its steps as runc's records do.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from tests.integration.lowlevel.conftest import TIMEOUT, Runtime


def test_proc_onto_a_symlink_is_refused(rt: Runtime) -> None:
    cid, bundle, _ = rt.bundle(["true"])
    (bundle / "rootfs" / "proc").rmdir()
    (bundle / "rootfs" / "proc").symlink_to("/symlink")
    r = rt.create(cid, bundle, out=bundle.parent / "out")
    assert r.returncode != 0, r
    assert "must be mounted on ordinary directory" in r.stderr, r
    rt.assert_nothing_left(cid, bundle)
    assert not Path("/symlink").exists()


def test_sys_onto_a_symlink_is_refused(rt: Runtime) -> None:
    cid, bundle, _ = rt.bundle(["true"])
    (bundle / "rootfs" / "sys").rmdir()
    (bundle / "rootfs" / "sys").symlink_to("/symlink")
    r = rt.create(cid, bundle, out=bundle.parent / "out")
    assert r.returncode != 0, r
    rt.assert_nothing_left(cid, bundle)
    assert not Path("/symlink").exists()


def test_create_container_hook_runs_from_the_rootfs(rt: Runtime) -> None:
    """hooks.bats's createContainer hook touches ./lib/<name>: relative to the root filesystem."""

    def edit(spec: dict[str, Any]) -> None:
        spec["hooks"] = {
            "createContainer": [{"path": "/bin/busybox", "args": ["sh", "-c", "/bin/busybox touch ./hook-was-here"]}]
        }

    cid, bundle, _ = rt.bundle(["true"], edit=edit)
    r = rt.cmd("run", "--bundle", str(bundle), cid, cwd=bundle)
    assert r.returncode == 0, r
    assert (bundle / "rootfs" / "hook-was-here").exists()
    assert not (bundle / "hook-was-here").exists()


def test_exec_as_root_into_a_cwd_only_its_owner_enters(rt: Runtime) -> None:
    """cwd.bats: root without CAP_DAC_OVERRIDE still gets into the cwd (entered before the
    capabilities are dropped)."""

    def edit(spec: dict[str, Any]) -> None:
        spec["process"]["cwd"] = "/root"
        spec["process"]["user"] = {"uid": 42, "gid": 0}

    cid, bundle, _ = rt.bundle(["sleep", "60"], edit=edit)
    os.chown(bundle / "rootfs" / "root", 42, 0)
    (bundle / "rootfs" / "root").chmod(0o700)
    rt.create(cid, bundle, out=bundle.parent / "out").ok()
    rt.cmd("start", cid).ok()
    r = rt.cmd("exec", "--user", "0", cid, "pwd").ok()
    assert r.stdout.strip() == "/root", r


def test_create_chdirs_before_switching_user(rt: Runtime) -> None:
    """A cwd the user may not enter, but the runtime may: the process starts there."""

    def edit(spec: dict[str, Any]) -> None:
        spec["process"]["cwd"] = "/root"
        spec["process"]["user"] = {"uid": 42, "gid": 42}

    cid, bundle, _ = rt.bundle(["sh", "-c", "pwd; id -u"], edit=edit)
    (bundle / "rootfs" / "root").chmod(0o700)
    r = rt.cmd("run", "--bundle", str(bundle), cid)
    assert r.returncode == 0, r
    assert r.stdout.split() == ["/root", "42"], r


def test_fifo_among_linux_devices(rt: Runtime) -> None:
    def edit(spec: dict[str, Any]) -> None:
        spec["linux"]["devices"] = [{"path": "/dev/skiff-fifo", "type": "p", "fileMode": 0o640}]

    cid, bundle, _ = rt.bundle(["sh", "-c", "test -p /dev/skiff-fifo && stat -c %a /dev/skiff-fifo"], edit=edit)
    r = rt.cmd("run", "--bundle", str(bundle), cid)
    assert r.returncode == 0, r
    assert r.stdout.strip() == "640", r


def _in_own_mount_namespace(rt: Runtime, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The runtime run in a private mount namespace of the test's: without a mount namespace of
    the container's own, runc mounts (and changes root propagation) in its caller's."""
    argv = ["unshare", "--mount", "--propagation", "private", *rt.argv, "--root", str(rt.root), *args]
    return subprocess.run(
        argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=TIMEOUT, cwd=cwd, check=False
    )


def test_config_without_namespaces(rt: Runtime) -> None:
    if shutil.which("unshare") is None:
        import pytest

        pytest.skip("needs unshare (util-linux)")

    def edit(spec: dict[str, Any]) -> None:
        spec["linux"]["namespaces"] = []
        spec.pop("hostname", None)  # needs a UTS namespace
        spec["linux"]["maskedPaths"] = []
        spec["linux"]["readonlyPaths"] = []
        # runc mounts these even without a mount namespace (in its caller's: here, the test's
        # own); skiff-lowlevel leaves the caller's namespace alone. Both run the process.
        spec["mounts"] = [{"destination": "/proc", "type": "proc", "source": "proc"}]

    cid, bundle, _ = rt.bundle(["sh", "-c", "echo hello from $(cat /etc/hostname)"], edit=edit)
    r = _in_own_mount_namespace(rt, "run", "--bundle", str(bundle), cid)
    assert r.returncode == 0, r
    assert r.stdout.strip() == "hello from skiff", r


def test_rootfs_dot_with_shared_root_propagation(rt: Runtime) -> None:
    """A bundle that is itself the root filesystem (root.path "."), with rootfsPropagation
    "shared", as the runtime-tools suite writes one."""
    if shutil.which("unshare") is None:
        import pytest

        pytest.skip("needs unshare (util-linux)")

    def edit(spec: dict[str, Any]) -> None:
        spec["root"] = {"path": ".", "readonly": False}
        spec["linux"]["rootfsPropagation"] = "shared"

    cid, bundle, spec = rt.bundle(["sh", "-c", "echo ok"], edit=edit)
    rootfs = bundle / "rootfs"
    for entry in rootfs.iterdir():
        entry.rename(bundle / entry.name)
    rootfs.rmdir()
    # The test's own mount namespace: shared propagation would otherwise reach the host's mounts.
    r = _in_own_mount_namespace(rt, "run", "--bundle", str(bundle), cid, cwd=bundle)
    assert r.returncode == 0, r
    assert r.stdout.strip() == "ok", r


def test_read_only_dev_gets_its_nodes_first(rt: Runtime) -> None:
    """mounts.bats 'ro /dev mount': /dev is filled while writable, then turned read-only."""

    def edit(spec: dict[str, Any]) -> None:
        for m in spec["mounts"]:
            if m["destination"] == "/dev":
                m["options"] = [*m["options"], "ro"]

    cid, bundle, _ = rt.bundle(["sh", "-c", "grep '^tmpfs /dev ' /proc/mounts; echo x > /dev/null && echo null=ok"],
                               edit=edit)
    r = rt.cmd("run", "--bundle", str(bundle), cid)
    assert r.returncode == 0, r
    line, result = r.stdout.splitlines()
    assert line.split()[3].startswith("ro,"), line
    assert result == "null=ok", r


def test_debug_exec_names_the_steps_as_runc(rt: Runtime) -> None:
    """exec.bats's check_exec_debug: the setns process's steps, in level=debug records."""
    cid, bundle, _ = rt.start_container(["sleep", "60"])
    r = rt.cmd("exec", cid, "true", global_args=("--debug",)).ok()
    for step in ("nsexec container setup", "child process in init()", "setns_init: about to exec"):
        assert step in r.stderr, r
    assert "level=debug" in r.stderr, r


def test_what_needs_a_namespace_of_its_own_is_refused_without(rt: Runtime) -> None:
    """runc's config validator: a hostname needs a UTS namespace, masked or read-only paths a
    mount namespace; refused before anything is made."""

    def no_uts(spec: dict[str, Any]) -> None:
        spec["linux"]["namespaces"] = [ns for ns in spec["linux"]["namespaces"] if ns["type"] != "uts"]
        spec["hostname"] = "skiff"

    cid, bundle, _ = rt.bundle(["true"], edit=no_uts)
    r = rt.create(cid, bundle, out=bundle.parent / "out")
    assert r.returncode != 0 and "unable to set hostname without a private UTS namespace" in r.stderr, r
    rt.assert_nothing_left(cid, bundle)

    def no_mount(spec: dict[str, Any]) -> None:
        spec["linux"]["namespaces"] = [ns for ns in spec["linux"]["namespaces"] if ns["type"] != "mount"]

    cid, bundle, _ = rt.bundle(["true"], edit=no_mount)
    r = rt.create(cid, bundle, out=bundle.parent / "out")
    assert r.returncode != 0, r
    assert "unable to restrict sys entries without a private MNT namespace" in r.stderr, r
    rt.assert_nothing_left(cid, bundle)
