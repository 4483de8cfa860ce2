"""Tars of a tree that changes while it is read: a file that shrank is padded, one gone is skipped."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from services.common.livetar import add_live, add_tree_live


def members(buf: io.BytesIO) -> dict[str, bytes | None]:
    buf.seek(0)
    with tarfile.open(fileobj=buf) as tf:
        return {m.name: (tf.extractfile(m).read() if m.isreg() else None) for m in tf.getmembers()}  # type: ignore[union-attr]


def test_a_file_that_shrinks_after_its_header_is_padded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x" * 5000)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        stat_then = tf.gettarinfo

        def shrinking(name: str | None = None, arcname: str | None = None, fileobj: object = None,
                      ) -> tarfile.TarInfo:
            info = stat_then(name, arcname, fileobj)  # type: ignore[arg-type]
            f.write_bytes(b"yy")  # the writer truncates it between the stat and the read
            return info

        monkeypatch.setattr(tf, "gettarinfo", shrinking)
        assert add_live(tf, f, "f")
    assert members(buf) == {"f": b"yy" + bytes(4998)}


def test_vanished_entries_are_skipped_and_folders_walked(tmp_path: Path) -> None:
    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "d" / "e" / "g").write_text("hi")
    (tmp_path / "d" / "h").symlink_to("e/g")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        assert not add_live(tf, tmp_path / "gone", "gone")
        add_tree_live(tf, tmp_path / "d", "d")
    assert members(buf) == {"d": None, "d/e": None, "d/h": None, "d/e/g": b"hi"}


def test_a_file_swapped_for_a_symlink_is_not_read_through(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A running container swaps a file for a link to a host path between our lstat and our open."""
    import os

    secret = tmp_path / "host-secret"
    secret.write_text("host only")
    root = tmp_path / "rootfs"
    root.mkdir()
    (root / "f").write_text("container data")
    real_lstat = os.lstat

    def swapping(path: object, *, dir_fd: int | None = None) -> os.stat_result:
        st = real_lstat(path, dir_fd=dir_fd)  # type: ignore[arg-type]
        if str(path) == "f":
            os.unlink("f", dir_fd=dir_fd)
            os.symlink(str(secret), "f", dir_fd=dir_fd)
        return st

    buf = io.BytesIO()
    folder = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        monkeypatch.setattr(os, "lstat", swapping)
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
            assert not add_live(tf, "f", "f", dir_fd=folder)
            monkeypatch.setattr(os, "lstat", real_lstat)
            add_tree_live(tf, ".", "root", dir_fd=folder)
    finally:
        os.close(folder)
    found = members(buf)
    assert b"host only" not in b"".join(v for v in found.values() if v)
    assert found == {"root": None, "root/f": None}  # the link itself, as data


def test_a_link_given_as_the_tree_is_copied_as_a_link(tmp_path: Path) -> None:
    (tmp_path / "dangling").symlink_to("/nonexistent/../../elsewhere")
    (tmp_path / "to-dir").symlink_to(tmp_path)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        add_tree_live(tf, tmp_path / "dangling", "dangling")
        add_tree_live(tf, tmp_path / "to-dir", "to-dir")
    assert members(buf) == {"dangling": None, "to-dir": None}
