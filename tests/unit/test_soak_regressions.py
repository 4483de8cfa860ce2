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


def test_a_container_folder_a_killed_create_left_without_its_record_goes(tmp_path: Path) -> None:
    """A daemon SIGKILLed inside a create's first record write left ``<id>/.record.pb.<pid>.tmp`` and
    no record: no container owned the folder and it stayed for ever (the soak's file probe, gate run
    of 2026-12-06). The next start removes it; a folder with its record stays."""
    from services.daemon.store import RECORD, RecordStore
    from services.gen.skiff.daemon.v1 import Container

    store = RecordStore(tmp_path)
    store.save(Container(id="a" * 64, name="/kept"))
    cut = tmp_path / ("b" * 64)
    cut.mkdir()
    (cut / f".{RECORD}.{4194304 + 1}.tmp").write_bytes(b"half")
    assert [r.name for r in RecordStore(tmp_path).load_all()] == ["/kept"]
    assert not cut.exists() and (tmp_path / ("a" * 64) / RECORD).exists()


def test_a_snapshot_folder_a_killed_prepare_left_unnamed_goes_and_numbering_passes_it(tmp_path: Path) -> None:
    """A highlevel SIGKILLed between a prepare's mkdir and the metadata's save left folder N with
    next_id still N: after its restart every prepare of N failed on the mkdir (FileExistsError,
    'Internal Server Error' for creates, seen in the faulted soak gate). At start such a folder goes
    and numbers resume above every folder there."""
    from services.highlevel.snapshots.snapshotter import Driver

    first = Snapshotter(tmp_path, Driver.VFS)
    first.prepare("kept", None, mount=False)
    kept = first.stat("kept").id
    cut = first.base / str(kept + 1)  # the next prepare's folder, made, its save never reached
    (cut / "fs").mkdir(parents=True)
    (cut / "fs" / "half").write_text("x")
    again = Snapshotter(tmp_path, Driver.VFS)
    assert not cut.exists() and again.stat("kept").id == kept
    again.prepare("next", None, mount=False)
    assert again.stat("next").id == kept + 2


def test_a_removed_container_snapshot_leaves_no_lock_behind(tmp_path: Path) -> None:
    """highlevel's object census over a soak: one threading.Lock more per launch, for ever (the
    snapshotter's per-key locks of container snapshots were never dropped)."""
    from services.highlevel.snapshots.snapshotter import Driver

    snapshots = Snapshotter(tmp_path, Driver.VFS)
    for n in range(50):
        snapshots.prepare(f"c{n}", None, mount=False)
        snapshots.remove(f"c{n}")
    assert snapshots._key_locks == {}
