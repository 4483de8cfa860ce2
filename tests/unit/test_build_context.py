"""The build context and COPY without a stack: a context tar extracted into its folder (`..` and
climbing hard links refused before anything is written, links followed only inside), .dockerignore
applied with exceptions, COPY sources resolved inside the context, wildcards, checksums that follow
content and not times, and the copy into a root with dockerd's destination rules."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from services.common.errors import InvalidArgument, NotFound
from services.daemon.builds.context import read_dockerfile, receive, resolve
from services.daemon.builds.sources import copy_into, pick


def _tar(path: Path, files: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, body in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tf.addfile(info, io.BytesIO(body))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tf.addfile(info)
    return path


def test_context_with_dockerignore_and_dockerfile_elsewhere(tmp_path: Path) -> None:
    body = _tar(tmp_path / "ctx.tar.gz", {
        "sub/Dockerfile.dev": b"FROM busybox\n", "a.md": b"x", "keep.md": b"k", "data/x.key": b"s",
        ".dockerignore": b"*.md\n!keep.md\ndata\nsub\n"})
    (tmp_path / "root").mkdir()
    ctx = receive(body, tmp_path / "root", "sub/Dockerfile.dev")
    assert read_dockerfile(ctx) == "FROM busybox\n"  # read even though .dockerignore names its folder
    left = sorted(str(p.relative_to(ctx.root)) for p in ctx.root.rglob("*"))
    assert left == [".dockerignore", "keep.md", "sub", "sub/Dockerfile.dev"]
    with pytest.raises(NotFound):
        pick(ctx.root, ["sub/Dockerfile.dev"], "copy", ctx.patterns)


def test_dockerfile_alone(tmp_path: Path) -> None:
    body = tmp_path / "body"
    body.write_bytes(b"FROM busybox\nRUN true\n")
    (tmp_path / "root").mkdir()
    ctx = receive(body, tmp_path / "root", "")
    assert read_dockerfile(ctx).startswith("FROM busybox")


def test_hostile_context_refused_before_writing(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    body = _tar(tmp_path / "bad.tar.gz", {"ok.txt": b"fine", "../escaped.txt": b"bad"})
    with pytest.raises(InvalidArgument, match="climbs out"):
        receive(body, tmp_path / "root", "")
    assert not (tmp_path / "escaped.txt").exists() and list((tmp_path / "root").iterdir()) == []


def test_links_resolve_inside_the_context(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    body = _tar(tmp_path / "links.tar", {"Dockerfile": b"FROM x\n", "real/f": b"in"},
                {"abs": "/etc", "up": "../../..", "rel": "real"})
    ctx = receive(body, tmp_path / "root", "")
    assert resolve(ctx.root, "up/real/f") == ["real", "f"]
    assert resolve(ctx.root, "rel/f") == ["real", "f"]
    with pytest.raises(NotFound):
        resolve(ctx.root, "abs/hostname")  # /etc of the context, never the host's
    with pytest.raises(NotFound):
        pick(ctx.root, ["abs/passwd"], "copy", [])


def test_copy_rules_wildcards_and_checksums(tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    (ctx / "dir" / "sub").mkdir(parents=True)
    (ctx / "a.txt").write_text("a")
    (ctx / "b.txt").write_text("b")
    (ctx / "dir" / "sub" / "c").write_text("c")
    first = pick(ctx, ["*.txt"], "copy", [])
    assert first.many and sorted(s.name for s in first.sources) == ["a.txt", "b.txt"]
    os.utime(ctx / "a.txt", (1, 1))
    assert pick(ctx, ["*.txt"], "copy", []).checksum == first.checksum  # times do not count
    (ctx / "a.txt").write_text("changed")
    assert pick(ctx, ["*.txt"], "copy", []).checksum != first.checksum
    assert pick(ctx, ["dir"], "copy", []).checksum.startswith("dir:")
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    copy_into(pick(ctx, ["a.txt"], "copy", []), root, "renamed", "/work", chown="", chmod="", unpack=False,
              scratch=scratch)
    assert (root / "work" / "renamed").read_text() == "changed"
    copy_into(pick(ctx, ["dir"], "copy", []), root, "/opt/", "/", chown="7:8", chmod="700", unpack=False,
              scratch=scratch)
    st = os.stat(root / "opt" / "sub" / "c")
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (7, 8, 0o700)
    with pytest.raises(InvalidArgument, match="must be a directory"):
        copy_into(first, root, "/one-file", "/", chown="", chmod="", unpack=False, scratch=scratch)
    # A destination through a link of the root's own stays inside the root.
    os.symlink("/", root / "hostroot")
    copy_into(pick(ctx, ["b.txt"], "copy", []), root, "/hostroot/tmp/", "/", chown="", chmod="", unpack=False,
              scratch=scratch)
    assert (root / "tmp" / "b.txt").read_text() == "b"
