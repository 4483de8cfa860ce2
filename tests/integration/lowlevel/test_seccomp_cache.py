"""The compiled-filter cache (SKIFF_SECCOMP_CACHE): the program loaded is libseccomp's own, it is
built once per profile, it filters as the uncached path does, and a damaged entry is refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.common.errors import SyscallError
from services.lowlevel import seccomp
from services.lowlevel.process import preload_modules
from services.lowlevel.seccomp import CACHE_ENV, load_seccomp
from tests.integration.lowlevel.test_seccomp_caps import (  # noqa: F401 - the autouse root/busybox check
    _root_and_busybox,
    deny,
    exit_code,
    run_child,
)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "seccomp-cache"
    monkeypatch.setenv(CACHE_ENV, str(folder))
    return folder


def entries(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.bpf")) if folder.is_dir() else []


def through_cache(profile: dict) -> None:
    """What the runtime does: preload before the fork (here: in the child), load in the init."""
    preload_modules({}, profile, None)
    assert seccomp._prepared is not None and seccomp._prepared[0] is profile
    load_seccomp(profile)


def test_cached_filter_denies_as_libseccomps_own(cache: Path, tmp_path: Path) -> None:
    target = tmp_path / "x"
    profile = deny(["mkdir", "mkdirat"], errnoRet=1)
    status, out = run_child(lambda: through_cache(profile), ["mkdir", str(target)])
    assert exit_code(status) != 0 and "Operation not permitted" in out
    assert not target.exists()
    [entry] = entries(cache)
    assert entry.read_bytes() == seccomp._export(profile)  # exactly what seccomp_load would load
    assert os.stat(cache).st_mode & 0o777 == 0o700

    # Built once: a second container's runtime reads it (libseccomp's build would fail here).
    def without_building() -> None:
        seccomp._export = None  # type: ignore[assignment]
        through_cache(profile)

    status, out = run_child(without_building, ["mkdir", str(target)])
    assert exit_code(status) != 0 and "Operation not permitted" in out
    assert entries(cache) == [entry]


def test_other_profile_other_entry_and_flags_passed(cache: Path, tmp_path: Path) -> None:
    allowed = deny(["personality"], errnoRet=1)
    allowed["flags"] = ["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG"]
    status, out = run_child(lambda: through_cache(allowed), ["mkdir", str(tmp_path / "y")])
    assert exit_code(status) == 0, out
    status, out = run_child(lambda: through_cache(deny(["mkdir", "mkdirat"], errnoRet=38)),
                            ["mkdir", str(tmp_path / "z")])
    assert "Function not implemented" in out
    assert len(entries(cache)) == 2


def test_damaged_entry_is_refused(cache: Path) -> None:
    profile = deny(["mkdir"], errnoRet=1)
    status, out = run_child(lambda: preload_modules({}, profile, None), ["true"])
    assert exit_code(status) == 0, out
    [entry] = entries(cache)
    entry.write_bytes(entry.read_bytes()[:-3])
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            preload_modules({}, profile, None)
        except SyscallError as exc:
            code = 0 if "seccomp cache" in str(exc) else 2
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
