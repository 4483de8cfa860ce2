"""skiff-lowlevel's os without os: the same answers as os and posixpath for what the runtime asks."""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

import pytest

from services.lowlevel import fastos, fastpath

PATHS = ["", ".", "/", "//", "///", "a", "/a", "a/", "/a/", "//a//b/", "a/./b", "/a/../b", "../a", "a/../..",
         "/../a", "/a/b/../../..", "a/b/../../c/.", "/proc/sys/../../etc", "./x/", "x//y///z"]


@pytest.mark.parametrize("p", PATHS)
def test_path_functions_match_posixpath(p: str) -> None:
    assert fastpath.normpath(p) == posixpath.normpath(p)
    assert fastpath.dirname(p) == posixpath.dirname(p)
    assert fastpath.abspath(p or ".") == posixpath.abspath(p or ".")
    for other in ("b", "/b", "b/", ""):
        assert fastpath.join(p, other) == posixpath.join(p, other)
        assert fastpath.join(p, other, "c") == posixpath.join(p, other, "c")


def test_tests_and_makedirs(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    (tmp_path / "l").symlink_to("missing")
    for name in ("f", "l", "nope", ""):
        p = str(tmp_path / name)
        assert fastpath.exists(p) == os.path.exists(p)
        assert fastpath.lexists(p) == os.path.lexists(p)
        assert fastpath.isdir(p) == os.path.isdir(p)
        assert fastpath.isfile(p) == os.path.isfile(p)
    deep = str(tmp_path / "a" / "b" / "c") + "/"
    fastos.makedirs(deep, 0o711)
    assert os.path.isdir(deep) and (os.stat(deep).st_mode & 0o777) == 0o711
    fastos.makedirs(deep, exist_ok=True)
    with pytest.raises(FileExistsError):
        fastos.makedirs(deep)
    with pytest.raises(FileExistsError):
        fastos.makedirs(str(tmp_path / "f"), exist_ok=True)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    with fastos.fdopen(fd) as f:
        assert f.read() == "x"
    assert fastos.O_CLOEXEC == os.O_CLOEXEC and fastos._exit is os._exit
