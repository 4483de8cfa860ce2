"""A removed snapshot's folder goes after the removal answered; one left by a dead highlevel goes at the next start."""

from __future__ import annotations

from pathlib import Path

from services.highlevel.snapshots.discard import FolderDiscarder
from services.highlevel.snapshots.snapshotter import Driver, Snapshotter


def test_removed_snapshot_folder_goes(tmp_path: Path) -> None:
    snapshots = Snapshotter(tmp_path / "snapshots", Driver.VFS)
    snapshots.prepare("c1", None, mount=False)
    folder = snapshots.dir(snapshots.stat("c1"))
    (folder / "fs" / "file").write_text("x")
    snapshots.remove("c1")
    assert not snapshots.exists("c1")
    assert snapshots.discarder.wait_idle(10)
    assert not folder.exists()


def test_folder_left_by_a_dead_highlevel_goes_at_start(tmp_path: Path) -> None:
    snapshots = Snapshotter(tmp_path / "snapshots", Driver.VFS)
    snapshots.prepare("c1", None, mount=False)
    folder = snapshots.dir(snapshots.stat("c1"))
    snapshots.discarder = FolderDiscarder()
    snapshots.discarder.discard = lambda _folder: None  # killed before its discarder ran
    snapshots.remove("c1")
    assert folder.exists()
    again = Snapshotter(tmp_path / "snapshots", Driver.VFS)
    assert not folder.exists()
    again.prepare("c2", None, mount=False)
    assert again.stat("c2").id > int(folder.name)  # numbers are not reused


def test_discarder_removes_each_and_survives_a_missing_folder(tmp_path: Path) -> None:
    discarder = FolderDiscarder()
    folders = [tmp_path / f"f{i}" for i in range(5)]
    for f in folders:
        (f / "sub").mkdir(parents=True)
    discarder.discard(tmp_path / "never-made")
    for f in folders:
        discarder.discard(f)
    assert discarder.wait_idle(10)
    assert not any(f.exists() for f in folders)
