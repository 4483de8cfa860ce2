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


def test_an_ipam_temp_file_of_a_killed_daemon_goes(tmp_path: Path) -> None:
    """A daemon SIGKILLed inside atomic_write left ``.<network>.json.<pid>.tmp`` in its IPAM folder
    (the soak's file probe saw it after kill-daemon); a live writer's temp file stays."""
    import os

    from services.daemon.network.ipam import Ipam

    dead_pid = 4194304 + 1  # above pid_max's ceiling: never a live process
    stale = tmp_path / f".abc.json.{dead_pid}.tmp"
    stale.write_text("{half")
    live = tmp_path / f".abc.json.{os.getpid()}.tmp"
    live.write_text("{being written")
    Ipam(tmp_path)
    assert not stale.exists() and live.exists()
