"""common.untar: the one safe extraction into a root (docker cp's and a layer's)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from services.common.errors import InvalidArgument
from services.common.untar import ExtractOptions, UnsafeArchive, extract_archive


def _archive(path: Path, *entries: tarfile.TarInfo | tuple[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for entry in entries:
            if isinstance(entry, tarfile.TarInfo):
                tar.addfile(entry)
            else:
                info = tarfile.TarInfo(entry[0])
                info.size = len(entry[1])
                tar.addfile(info, io.BytesIO(entry[1]))
    return path


def _symlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info


def test_links_out_are_followed_inside_the_root_only(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "dest").mkdir(parents=True)
    outside.mkdir()
    archive = _archive(tmp_path / "a.tar", _symlink("abs", str(outside)), ("abs/f", b"1"),
                       _symlink("up", "../../../../" + str(outside).lstrip("/")), ("up/g", b"2"))
    extract_archive(archive, root, ExtractOptions(), ["dest"])
    assert list(outside.iterdir()) == []
    inside = root / str(outside).lstrip("/")
    assert (inside / "f").read_bytes() == b"1" and (inside / "g").read_bytes() == b"2"
    assert (root / "dest" / "abs").is_symlink()


def test_dotdot_refused_before_anything_is_written(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    archive = _archive(tmp_path / "a.tar", ("first", b"x"), ("../escape", b"y"))
    with pytest.raises(UnsafeArchive):
        extract_archive(archive, root, ExtractOptions())
    assert list(root.iterdir()) == [] and not (tmp_path / "escape").exists()


def test_no_overwrite_dir_non_dir_checked_whole_first(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    archive = _archive(tmp_path / "a.tar", ("new", b"x"), ("sub", b"file over a folder"))
    with pytest.raises(InvalidArgument, match="cannot overwrite directory"):
        extract_archive(archive, root, ExtractOptions(no_overwrite_dir_non_dir=True))
    assert sorted(p.name for p in root.iterdir()) == ["sub"]
