"""The safe extractor against hostile layers: each its own test, each with a canary outside."""

from __future__ import annotations

import gzip
import io
import os
import stat
import sys
import tarfile
from pathlib import Path

import pytest

from services.common.untar import WhiteoutMode
from services.highlevel.content.store import ContentStore, DigestMismatch
from services.highlevel.snapshots.unpack import (
    CorruptLayer,
    UnpackLimits,
    UnsafeLayer,
    unpack_layer,
)
from tests.support.oci_image import Entry, sha, tar_of_entries


@pytest.fixture
def box(tmp_path: Path) -> tuple[Path, Path]:
    """(target root, canary folder beside it): the canary must never change."""
    root = tmp_path / "a" / "b" / "root"
    root.mkdir(parents=True)
    canary = tmp_path / "etc"
    canary.mkdir()
    (canary / "shadow").write_text("secret\n")
    return root, canary


def _unpack(tmp: Path, data: bytes, root: Path, mode: WhiteoutMode = WhiteoutMode.APPLY,
            limits: UnpackLimits | None = None) -> None:
    blob = tmp / "layer.blob"
    blob.write_bytes(data)
    unpack_layer(blob, root, mode=mode, limits=limits)


def _tree(p: Path) -> list[str]:
    return sorted(str(x.relative_to(p)) for x in p.rglob("*"))


def test_dotdot_is_refused(tmp_path: Path, box: tuple[Path, Path]) -> None:
    root, canary = box
    layer = tar_of_entries([Entry("../../../etc/x", data=b"pwned")])
    with pytest.raises(UnsafeLayer, match="climbs out"):
        _unpack(tmp_path, layer, root)
    assert not (canary / "x").exists() and not (tmp_path / "a" / "etc").exists()
    assert _tree(canary) == ["shadow"]


def test_absolute_symlink_then_write_through_it_stays_inside(tmp_path: Path, box: tuple[Path, Path]) -> None:
    root, canary = box
    layer = tar_of_entries([
        Entry("evil", tarfile.SYMTYPE, linkname=str(canary)),
        Entry("evil/x", data=b"pwned"),
        Entry("rel", tarfile.SYMTYPE, linkname="../../../../etc"),
        Entry("rel/y", data=b"pwned"),
    ])
    _unpack(tmp_path, layer, root)
    assert _tree(canary) == ["shadow"]
    # The writes were clamped inside the root, as Docker's scoped symlink resolution does.
    assert (root / str(canary).lstrip("/") / "x").read_bytes() == b"pwned"
    assert (root / "etc" / "y").read_bytes() == b"pwned"
    assert os.readlink(root / "evil") == str(canary)


def test_symlink_replaced_not_followed(tmp_path: Path, box: tuple[Path, Path]) -> None:
    root, canary = box
    layer = tar_of_entries([
        Entry("f", tarfile.SYMTYPE, linkname=str(canary / "shadow")),
        Entry("f", data=b"over"),
    ])
    _unpack(tmp_path, layer, root)
    assert (canary / "shadow").read_text() == "secret\n"
    assert not (root / "f").is_symlink() and (root / "f").read_bytes() == b"over"


def test_hardlink_to_etc_shadow_is_refused(tmp_path: Path, box: tuple[Path, Path]) -> None:
    root, canary = box
    for target in (str(canary / "shadow"), "/etc/shadow"):
        layer = tar_of_entries([Entry("stolen", tarfile.LNKTYPE, linkname=target)])
        with pytest.raises(UnsafeLayer, match="not in this archive"):
            _unpack(tmp_path, layer, root)
    layer = tar_of_entries([Entry("stolen", tarfile.LNKTYPE, linkname="../../../etc/shadow")])
    with pytest.raises(UnsafeLayer, match="climbs out"):
        _unpack(tmp_path, layer, root)
    assert not (root / "stolen").exists()
    assert (canary / "shadow").stat().st_nlink == 1


def test_hardlink_inside_layer_works(tmp_path: Path, box: tuple[Path, Path]) -> None:
    root, _ = box
    layer = tar_of_entries([Entry("a", data=b"x"), Entry("b", tarfile.LNKTYPE, linkname="a")])
    _unpack(tmp_path, layer, root)
    assert (root / "a").stat().st_ino == (root / "b").stat().st_ino


def test_devices_skipped_setuid_kept(tmp_path: Path, box: tuple[Path, Path]) -> None:
    root, _ = box
    layer = tar_of_entries([
        Entry("dev", tarfile.DIRTYPE, mode=0o755),
        Entry("dev/sda", tarfile.BLKTYPE, devmajor=8, devminor=0),
        Entry("dev/mem", tarfile.CHRTYPE, devmajor=1, devminor=1),
        Entry("suid", data=b"#!", mode=0o4755),
    ])
    _unpack(tmp_path, layer, root)
    assert _tree(root) == ["dev", "suid"]
    assert stat.S_IMODE((root / "suid").stat().st_mode) == 0o4755  # as Docker's images keep it
    stripped = root.parent / "stripped"
    stripped.mkdir()
    _unpack(tmp_path, layer, stripped, limits=UnpackLimits(allow_setuid=False))
    assert stat.S_IMODE((stripped / "suid").stat().st_mode) == 0o755


def test_gzip_bomb_is_stopped(tmp_path: Path, box: tuple[Path, Path]) -> None:
    root, _ = box
    # 512 MiB of zeros in one entry, gzip'd to about half a MiB.
    size = 512 << 20
    raw = tmp_path / "bomb.gz"
    info = tarfile.TarInfo("zeros")
    info.size = size
    with gzip.open(raw, "wb", compresslevel=9) as gz:
        gz.write(info.tobuf(format=tarfile.PAX_FORMAT))
        block = bytes(1 << 20)
        for _ in range(size >> 20):
            gz.write(block)
    with pytest.raises(UnsafeLayer, match="bomb"):
        unpack_layer(raw, root, mode=WhiteoutMode.APPLY, limits=UnpackLimits(ratio_floor=8 << 20))
    # The extractor stopped early: far less than the full size was written.
    assert (root / "zeros").stat().st_size < size // 4
    with pytest.raises(UnsafeLayer, match="more than"):
        unpack_layer(raw, root, mode=WhiteoutMode.APPLY, limits=UnpackLimits(max_bytes=4 << 20))


def test_truncated_layer_is_corrupt(tmp_path: Path, box: tuple[Path, Path]) -> None:
    root, _ = box
    data = gzip.compress(tar_of_entries([Entry("big", data=os.urandom(300_000))]))
    with pytest.raises(CorruptLayer):
        _unpack(tmp_path, data[: len(data) // 2], root)


def test_diff_id_mismatch(tmp_path: Path, box: tuple[Path, Path]) -> None:
    root, _ = box
    blob = tmp_path / "l"
    blob.write_bytes(tar_of_entries([Entry("a", data=b"1")]))
    with pytest.raises(CorruptLayer, match="diff ID"):
        unpack_layer(blob, root, mode=WhiteoutMode.APPLY, expected_diff_id="sha256:" + "0" * 64)


def test_overlay_whiteouts_converted(tmp_path: Path, box: tuple[Path, Path]) -> None:
    root, _ = box
    layer = tar_of_entries([
        Entry("d", tarfile.DIRTYPE, mode=0o755), Entry("d/.wh.gone"), Entry("d/.wh..wh..opq"),
        Entry("d/new", data=b"n"),
    ])
    _unpack(tmp_path, layer, root, mode=WhiteoutMode.OVERLAY)
    st = os.lstat(root / "d" / "gone")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert os.getxattr(root / "d", "trusted.overlay.opaque") == b"y"
    assert (root / "d" / "new").read_bytes() == b"n"


def test_apply_whiteouts(tmp_path: Path, box: tuple[Path, Path]) -> None:
    root, _ = box
    _unpack(tmp_path, tar_of_entries([
        Entry("d", tarfile.DIRTYPE, mode=0o755), Entry("d/gone", data=b"g"), Entry("o", tarfile.DIRTYPE),
        Entry("o/old", data=b"o"),
    ]), root)
    _unpack(tmp_path, tar_of_entries([
        Entry("d/.wh.gone"), Entry("o", tarfile.DIRTYPE), Entry("o/.wh..wh..opq"), Entry("o/new", data=b"n"),
    ]), root)
    assert _tree(root) == ["d", "o", "o/new"]


def test_content_store_verifies_and_leaves_nothing(tmp_path: Path) -> None:
    cs = ContentStore(tmp_path / "content")
    good = b"hello"
    assert cs.write_bytes(good, sha(good)) == sha(good)
    with pytest.raises(DigestMismatch):
        cs.write_bytes(b"lies", sha(good + b"x"))
    assert list(cs.ingest_dir.iterdir()) == []
    assert cs.list() == [sha(good)]
    with cs.lease() as lease:
        lease.digests.add(sha(good))
        assert cs.gc(set()) == []
    assert cs.gc(set()) == [sha(good)]
    assert io.BytesIO  # keep the import used for readers of this file


def test_zstd_layer_unpacks(tmp_path: Path, box: tuple[Path, Path]) -> None:
    import zstandard

    root, _ = box
    layer = zstandard.ZstdCompressor().compress(tar_of_entries([Entry("z", data=b"zstd!")]))
    _unpack(tmp_path, layer, root)
    assert (root / "z").read_bytes() == b"zstd!"


def test_zstd_without_module_is_a_clear_error(
    tmp_path: Path, box: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.common.errors import FailedPrecondition

    # As on a machine without the module: both import routes fail.
    monkeypatch.setitem(sys.modules, "zstandard", None)
    monkeypatch.setitem(sys.modules, "compression", None)
    root, _ = box
    with pytest.raises(FailedPrecondition, match="zstd"):
        _unpack(tmp_path, b"\x28\xb5\x2f\xfd" + b"\0" * 64, root)
