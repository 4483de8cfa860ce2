"""Seccomp and capabilities applied in a forked child that then execs busybox.

No container is made: the child applies the functions the init process calls, then execs
``/bin/busybox``; the test reads its output from a pipe and its status from waitpid.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from services.common.errors import InvalidArgument
from services.lowlevel import capabilities as caps_mod
from services.lowlevel.capabilities import (
    apply_capabilities,
    drop_bounding,
    set_capabilities,
    set_no_new_privs,
    switch_user,
)
from services.lowlevel.seccomp import load_seccomp

BUSYBOX = "/bin/busybox"
KILL_AND_BIND = (1 << 5) | (1 << 10)  # CAP_KILL, CAP_NET_BIND_SERVICE


@pytest.fixture(autouse=True)
def _root_and_busybox() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: capabilities and seccomp filters")
    if not os.access(BUSYBOX, os.X_OK):
        pytest.skip(f"needs {BUSYBOX}")


@pytest.fixture
def tmpdir_() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="skiff-test-"))
    os.chmod(path, 0o777)  # the uid-1000 child may need to look inside
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def run_child(prepare: Callable[[], None], argv: list[str]) -> tuple[int, str]:
    """Fork, run ``prepare`` then exec busybox with ``argv``; return (wait status, output)."""
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            os.dup2(write_fd, 1)
            os.dup2(write_fd, 2)
            prepare()
            os.execv(BUSYBOX, [BUSYBOX, *argv])
        except BaseException as exc:  # whatever went wrong is told to the parent, then the child dies
            os.write(2, f"child failed: {exc!r}\n".encode())
        finally:
            os._exit(127)
    os.close(write_fd)
    chunks = []
    with os.fdopen(read_fd, "rb") as pipe:
        while chunk := pipe.read(65536):
            chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    return status, b"".join(chunks).decode(errors="replace")


def exit_code(status: int) -> int:
    return os.waitstatus_to_exitcode(status)


def deny(names: list[str], **extra: object) -> dict:
    rule: dict = {"names": names, "action": "SCMP_ACT_ERRNO", **extra}
    return {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [rule]}


def proc_status(output: str) -> dict[str, str]:
    fields = {}
    for line in output.splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


# --- seccomp ---------------------------------------------------------------------------------


def test_errno_eperm_denies_mkdir(tmpdir_: Path) -> None:
    target = tmpdir_ / "x"
    profile = deny(["mkdir", "mkdirat"], errnoRet=1)
    status, out = run_child(lambda: load_seccomp(profile), ["mkdir", str(target)])
    assert exit_code(status) != 0
    assert "Operation not permitted" in out
    assert not target.exists()


def test_errno_enosys_and_unknown_names_skipped(tmpdir_: Path) -> None:
    target = tmpdir_ / "x"
    profile = deny(["no_such_syscall_skiff", "mkdir", "mkdirat"], errnoRet=38)
    status, out = run_child(lambda: load_seccomp(profile), ["mkdir", str(target)])
    assert exit_code(status) != 0
    assert "Function not implemented" in out
    assert not target.exists()


def test_unrelated_syscalls_still_work_after_load(tmpdir_: Path) -> None:
    target = tmpdir_ / "x"
    profile = deny(["personality"], errnoRet=1)
    status, out = run_child(lambda: load_seccomp(profile), ["mkdir", str(target)])
    assert exit_code(status) == 0, out
    assert target.is_dir()


@pytest.mark.parametrize(
    ("sig", "denied"),
    [("USR1", True), ("USR2", False)],
)
def test_argument_filter(sig: str, denied: bool) -> None:
    # kill(pid, sig) is refused only when arg1 == SIGUSR1; the shell ignores both signals so a
    # delivered one does no harm and the exit status tells which happened.
    profile = deny(
        ["kill"],
        errnoRet=1,
        args=[{"index": 1, "value": int(signal.SIGUSR1), "op": "SCMP_CMP_EQ"}],
    )
    script = f'trap "" USR1 USR2; kill -{sig} $$ && echo delivered'
    status, out = run_child(lambda: load_seccomp(profile), ["sh", "-c", script])
    if denied:
        assert exit_code(status) != 0
        assert "Operation not permitted" in out
        assert "delivered" not in out
    else:
        assert exit_code(status) == 0, out
        assert "delivered" in out


def test_same_argument_twice_is_or(tmpdir_: Path) -> None:
    # Two comparisons of arg1 become two rules (runc's behaviour): USR1 or USR2 is refused.
    profile = deny(
        ["kill"],
        errnoRet=1,
        args=[
            {"index": 1, "value": int(signal.SIGUSR1), "op": "SCMP_CMP_EQ"},
            {"index": 1, "value": int(signal.SIGUSR2), "op": "SCMP_CMP_EQ"},
        ],
    )
    script = 'trap "" USR1 USR2 HUP; kill -USR2 $$ || echo refused; kill -HUP $$ && echo delivered'
    status, out = run_child(lambda: load_seccomp(profile), ["sh", "-c", script])
    assert exit_code(status) == 0, out
    assert "refused" in out
    assert "delivered" in out


@pytest.mark.parametrize("action", ["SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL", "SCMP_ACT_TRAP"])
def test_kill_actions_end_with_sigsys(tmpdir_: Path, action: str) -> None:
    profile = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": action}],
    }
    status, _ = run_child(lambda: load_seccomp(profile), ["mkdir", str(tmpdir_ / "x")])
    assert os.WIFSIGNALED(status)
    assert os.WTERMSIG(status) == signal.SIGSYS


def test_architectures_and_flags_load(tmpdir_: Path) -> None:
    profile = deny(["mkdir", "mkdirat"], errnoRet=1)
    profile["architectures"] = ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    profile["flags"] = ["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG"]
    status, out = run_child(lambda: load_seccomp(profile), ["mkdir", str(tmpdir_ / "x")])
    assert exit_code(status) != 0
    assert "Operation not permitted" in out


def test_bad_action_raises_before_loading() -> None:
    with pytest.raises(InvalidArgument, match=r"syscalls\[0\]\.action"):
        load_seccomp({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["kill"], "action": "NOPE"}]})


# --- capabilities ----------------------------------------------------------------------------


def test_keep_only_kill_and_net_bind_service() -> None:
    names = ["CAP_KILL", "CAP_NET_BIND_SERVICE"]
    caps = {key: names for key in caps_mod.CAP_SETS}

    def prepare() -> None:
        refused = apply_capabilities(caps, keep_for_setuid=False)
        assert refused == [], refused

    status, out = run_child(prepare, ["cat", "/proc/self/status"])
    assert exit_code(status) == 0, out
    fields = proc_status(out)
    for key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(fields[key], 16) == KILL_AND_BIND, (key, fields[key])


def test_switch_user_with_ambient_net_bind_service() -> None:
    caps = {
        "bounding": ["CAP_NET_BIND_SERVICE", "CAP_KILL"],
        "effective": ["CAP_NET_BIND_SERVICE"],
        "permitted": ["CAP_NET_BIND_SERVICE"],
        "inheritable": ["CAP_NET_BIND_SERVICE"],
        "ambient": ["CAP_NET_BIND_SERVICE"],
    }

    def prepare() -> None:
        apply_capabilities(caps, keep_for_setuid=True)
        switch_user(1000, 1000, [1000, 2000])
        refused = set_capabilities(caps)
        assert refused == [], refused

    status, out = run_child(prepare, ["cat", "/proc/self/status"])
    assert exit_code(status) == 0, out
    fields = proc_status(out)
    assert fields["Uid"].split() == ["1000"] * 4
    assert fields["Gid"].split() == ["1000"] * 4
    assert sorted(fields["Groups"].split()) == ["1000", "2000"]
    bind = 1 << 10
    # A non-root exec of a file without file caps keeps exactly the ambient set.
    assert int(fields["CapAmb"], 16) == bind
    assert int(fields["CapEff"], 16) == bind
    assert int(fields["CapPrm"], 16) == bind
    assert int(fields["CapInh"], 16) == bind
    assert int(fields["CapBnd"], 16) == KILL_AND_BIND


def test_ambient_not_inheritable_is_refused_not_fatal() -> None:
    caps = {
        "bounding": ["CAP_NET_BIND_SERVICE"],
        "effective": ["CAP_NET_BIND_SERVICE"],
        "permitted": ["CAP_NET_BIND_SERVICE"],
        "inheritable": [],
        "ambient": ["CAP_NET_BIND_SERVICE"],
    }

    def prepare() -> None:
        drop_bounding(caps)
        switch_user(1000, 1000, [])
        refused = set_capabilities(caps)
        os.write(1, f"refused={','.join(refused)}\n".encode())

    status, out = run_child(prepare, ["cat", "/proc/self/status"])
    assert exit_code(status) == 0, out
    assert "refused=CAP_NET_BIND_SERVICE" in out
    assert int(proc_status(out)["CapAmb"], 16) == 0


def test_no_new_privs() -> None:
    status, out = run_child(set_no_new_privs, ["cat", "/proc/self/status"])
    assert exit_code(status) == 0, out
    assert proc_status(out)["NoNewPrivs"] == "1"


def test_seccomp_after_caps_and_nnp(tmpdir_: Path) -> None:
    # The runtime's order with noNewPrivileges: caps, NNP, seccomp, execve. Loading without
    # CAP_SYS_ADMIN works only because NNP is set first.
    names = ["CAP_KILL"]
    caps = {key: names for key in caps_mod.CAP_SETS}
    profile = deny(["mkdir", "mkdirat"], errnoRet=1)

    def prepare() -> None:
        apply_capabilities(caps, keep_for_setuid=False)
        set_no_new_privs()
        load_seccomp(profile)

    status, out = run_child(prepare, ["mkdir", str(tmpdir_ / "x")])
    assert exit_code(status) != 0
    assert "Operation not permitted" in out
    assert "child failed" not in out


def test_seccomp_without_nnp_needs_cap_sys_admin(tmpdir_: Path) -> None:
    # The filter does not set NO_NEW_PRIVS behind the runtime's back: without it and without
    # CAP_SYS_ADMIN the kernel refuses the filter, which is why the runtime then loads it first.
    caps = {key: ["CAP_KILL"] for key in caps_mod.CAP_SETS}
    profile = deny(["mkdir", "mkdirat"], errnoRet=1)

    def prepare() -> None:
        apply_capabilities(caps, keep_for_setuid=False)
        load_seccomp(profile)

    status, out = run_child(prepare, ["cat", "/proc/self/status"])
    assert exit_code(status) == 127
    assert "seccomp_load: Permission denied" in out
