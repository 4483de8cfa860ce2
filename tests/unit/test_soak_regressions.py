"""Engine bugs the soak found that a unit test can pin."""

from __future__ import annotations

from pathlib import Path

from services.highlevel.snapshots.snapshotter import Snapshotter


def test_a_metadata_temp_file_of_a_killed_highlevel_goes_at_start(tmp_path: Path) -> None:
    """A highlevel SIGKILLed inside atomic_write left ``.overlay.json.<pid>.tmp`` for ever (the soak's
    file probe saw it after kill-highlevel)."""
    first = Snapshotter(tmp_path)
    name = first._meta_path.name
    stale = tmp_path / f".{name}.12345.tmp"
    stale.write_text("{half")
    other = tmp_path / "keep.tmp"
    other.write_text("not ours")
    Snapshotter(tmp_path)
    assert not stale.exists() and other.exists()
