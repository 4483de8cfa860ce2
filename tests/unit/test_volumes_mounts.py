"""Volumes and mounts without a stack: Binds parsing, container path resolution inside the root, safe extraction."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from services.common.errors import InvalidArgument
from services.daemon.archive import extract_tar, go_mode, resolve
from services.daemon.mounts import oci_mounts
from services.daemon.volumes import VolumeStore
from services.dockermodel.mounts import mount_specs, parse_bind
from services.gen.skiff.daemon.v1 import MountPoint


def test_parse_bind_forms() -> None:
    named = parse_bind("data:/srv/data:ro")
    assert (named.type, named.source, named.target, named.read_only) == ("volume", "data", "/srv/data", True)
    host = parse_bind("/etc/../tmp:/mnt")
    assert (host.type, host.source, host.create_source, host.read_only) == ("bind", "/tmp", True, False)
    anonymous = parse_bind("/scratch")
    assert (anonymous.type, anonymous.source) == ("volume", "")
    for bad in ("a:b", "x:/y:rx", "x:/y:ro,rw", ":/y", "data:/"):
        with pytest.raises(InvalidArgument):
            parse_bind(bad)


def test_mount_specs_refuses_duplicates_and_bad_shapes() -> None:
    with pytest.raises(InvalidArgument):
        mount_specs({}, {"Binds": ["a:/x"], "Tmpfs": {"/x": ""}})
    with pytest.raises(InvalidArgument):
        mount_specs({}, {"Mounts": [{"Type": "tmpfs", "Target": "/t", "TmpfsOptions": {"SizeBytes": 2**70}}]})
    specs, volumes = mount_specs({"Volumes": {"/v": {}}}, {"Mounts": [{"Type": "volume", "Target": "/d"}]})
    assert [s.target for s in specs] == ["/d"] and volumes == ["/v"]


def test_resolve_follows_links_inside_the_root_and_mounts(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "escape").symlink_to("/../../../../etc")
    (root / "rel").symlink_to("../../../etc")
    volume = tmp_path / "vol"
    volume.mkdir()
    points = [MountPoint(type="volume", source=str(volume), destination="/data")]
    assert resolve(str(root), points, "/etc/escape/passwd", True) == str(root / "etc" / "passwd")
    assert resolve(str(root), points, "/rel/x", True) == str(root / "etc" / "x")
    assert resolve(str(root), points, "/data/f", True) == str(volume / "f")
    assert resolve(str(root), points, "/data/../etc", True) == str(root / "etc")


def test_extract_refuses_escapes(tmp_path: Path) -> None:
    archive = tmp_path / "a.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("../outside")
        tar.addfile(info, io.BytesIO(b""))
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(InvalidArgument):
        extract_tar(str(archive), str(dest))
    assert not (tmp_path / "outside").exists()
    with tarfile.open(archive, "w") as tar:
        tar.addfile(tarfile.TarInfo("sub"), io.BytesIO(b""))
    (dest / "sub").mkdir()
    with pytest.raises(InvalidArgument):
        extract_tar(str(archive), str(dest), no_overwrite_dir_non_dir=True)


def test_volume_store_and_go_modes(tmp_path: Path) -> None:
    store = VolumeStore(tmp_path)
    volume = store.create("v1", {"a": "b"}, {})
    assert volume.mountpoint == str(tmp_path / "v1" / "_data") and not volume.anonymous
    assert store.create("v1", {}, {}).labels == {"a": "b"}
    assert store.create("", {}, {}).anonymous
    with pytest.raises(InvalidArgument):
        store.create("../x", {}, {})
    store.delete("v1")
    assert "v1" not in store.names()
    assert go_mode(os.stat(tmp_path).st_mode) & (1 << 31)
    assert oci_mounts([MountPoint(type="tmpfs", destination="/t", options=["exec"])])[0]["options"] == [
        "nosuid", "nodev"]
