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

        def shrinking(path: str, arcname: str) -> tarfile.TarInfo:
            info = stat_then(path, arcname)
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
