"""common/dirspread.py: the top-directory hint is set where the file system has it, and is harmless elsewhere."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import pytest

from services.common.dirspread import spread_subfolders
from services.highlevel.snapshots.snapshotter import Snapshotter


def fs_type(path: Path) -> str:
    """The type of the file system holding path (the top one where mounts are stacked)."""
    return subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "-T", str(path)], capture_output=True, text=True,
                          timeout=10).stdout.split()[-1]


def spreads_subfolders(folder: Path) -> bool:
    """The flag as e2fsprogs' lsattr reads it (its 'T'), not through the module under test."""
    done = subprocess.run(["lsattr", "-d", str(folder)], capture_output=True, text=True, timeout=10)
    return done.returncode == 0 and "T" in done.stdout.split()[0]


def test_set_on_ext4_and_kept(tmp_path: Path) -> None:
    folder = tmp_path / "containers"
    made = spread_subfolders(folder)
    assert folder.is_dir()
    assert made == spreads_subfolders(folder)
    if fs_type(tmp_path) in ("ext2", "ext3", "ext4"):
        assert made
    assert spread_subfolders(folder) == made  # again: no error, same answer


def test_no_flag_on_tmpfs_is_no_error() -> None:
    shm = Path("/dev/shm")
    if fs_type(shm) != "tmpfs":
        pytest.skip("/dev/shm is not a tmpfs here")
    with tempfile.TemporaryDirectory(dir=shm) as d:
        assert spread_subfolders(Path(d) / "sub") is False
        assert (Path(d) / "sub").is_dir()


def test_snapshot_folders_spread(tmp_path: Path) -> None:
    snapshotter = Snapshotter(tmp_path / "snapshots")
    assert spreads_subfolders(snapshotter.base) == (fs_type(tmp_path) in ("ext2", "ext3", "ext4"))
