"""Multi-layer images with whiteouts, diff, commit, export: overlay and vfs side by side."""

from __future__ import annotations

import asyncio
import os
import tarfile
from pathlib import Path

import pytest

from services.common.errors import Conflict
from services.highlevel.images import commit
from services.highlevel.snapshots.snapshotter import ChangeKind, Driver
from tests.conftest import needs_root
from tests.integration.images.conftest import make_manager, mounts_under
from tests.support.oci_image import BuiltImage, store_image


@pytest.mark.parametrize("driver", [Driver.OVERLAY, Driver.VFS])
def test_whiteouts_diff_commit_export(prefix: Path, multi_image: BuiltImage, driver: Driver) -> None:
    needs_root()
    with make_manager(prefix, driver) as m:
        store_image(m, "multi:1", multi_image)
        rootfs = asyncio.run(m.prepare("multi:1", "c1"))
        if driver is Driver.OVERLAY:
            assert str(rootfs) in mounts_under(prefix)
        # As Docker: the whited-out file is gone, the opaque folder hides everything below it.
        assert (rootfs / "bin" / "busybox").is_file()
        assert (rootfs / "data" / "keep").read_text() == "keep\n"
        assert not (rootfs / "data" / "gone").exists()
        assert sorted(os.listdir(rootfs / "opq")) == ["new"]
        assert not (rootfs / "etc" / "hostname").exists() and (rootfs / "etc" / "passwd").exists()

        (rootfs / "added.txt").write_text("hi\n")
        (rootfs / "data" / "keep").write_text("changed\n")
        os.unlink(rootfs / "etc" / "passwd")
        changes = {(c.kind, c.path) for c in m.snapshots.changes("c1")}
        assert (ChangeKind.ADDED, "/added.txt") in changes
        assert (ChangeKind.MODIFIED, "/data/keep") in changes
        assert (ChangeKind.DELETED, "/etc/passwd") in changes
        assert (ChangeKind.MODIFIED, "/etc") in changes

        image_id = asyncio.run(commit.commit(m, "c1", "multi:1", "committed:1", comment="test commit"))
        info = m.inspect("committed:1")
        assert info.id == image_id and len(info.layers) == 4
        assert info.history[-1]["comment"] == "test commit"
        root2 = asyncio.run(m.prepare("committed:1", "c2"))
        assert (root2 / "added.txt").read_text() == "hi\n"
        assert (root2 / "data" / "keep").read_text() == "changed\n"
        assert not (root2 / "etc" / "passwd").exists()
        assert sorted(os.listdir(root2 / "opq")) == ["new"]

        out = prefix / "export.tar"
        asyncio.run(m.export("c2", out))
        with tarfile.open(out) as tf:
            names = set(tf.getnames())
        assert {"added.txt", "bin/busybox", "opq/new"} <= names and "etc/passwd" not in names

        m.snapshots.remove("c1")
        m.snapshots.remove("c2")
        assert mounts_under(prefix) == []


def test_remove_in_use_refused_unless_forced(manager, busybox_image: BuiltImage) -> None:  # type: ignore[no-untyped-def]
    store_image(manager, "bb:1", busybox_image)
    manager.tag("bb:1", "bb:2")
    asyncio.run(manager.prepare("bb:1", "c1", mount=False))
    # Untagging one of two names is always fine.
    assert [i.untagged for i in asyncio.run(manager.remove("bb:2", in_use=lambda _: True))] == ["bb:2"]
    with pytest.raises(Conflict):
        asyncio.run(manager.remove("bb:1", in_use=lambda _: True))
    items = asyncio.run(manager.remove("bb:1", force=True, in_use=lambda _: True))
    assert items[-1].deleted == busybox_image.config_digest
    manager.snapshots.remove("c1")
    asyncio.run(manager.gc())
    assert manager.content.list() == [] and manager.snapshots.list() == []


def test_runc_runs_from_prepared_rootfs(manager, busybox_image: BuiltImage, prefix: Path) -> None:  # type: ignore[no-untyped-def]
    import shutil
    import subprocess

    from tests.support.busybox import default_spec, write_spec

    if shutil.which("runc") is None:
        pytest.skip("runc not installed")
    store_image(manager, "bb:1", busybox_image)
    rootfs = asyncio.run(manager.prepare("bb:1", "c1"))
    bundle = prefix / "bundle"
    bundle.mkdir()
    spec = default_spec(["/bin/busybox", "sh", "-c", "echo from-image > /marker; cat /marker"])
    spec["root"] = {"path": str(rootfs), "readonly": False}
    write_spec(bundle, spec)
    run = subprocess.run(["runc", "--root", str(prefix / "runc"), "run", "--bundle", str(bundle), "t1"],
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    subprocess.run(["runc", "--root", str(prefix / "runc"), "delete", "-f", "t1"], capture_output=True,
                   timeout=30)
    assert run.returncode == 0, run.stderr
    assert "from-image" in run.stdout
    assert (rootfs / "marker").read_text() == "from-image\n"
