"""The daemon's change counter in shared memory (common/list_generation.py): what the daemon bumps the
apiserver reads; nothing is trusted without a live daemon holding the file, and a file made anew is
found again."""

from __future__ import annotations

from pathlib import Path

from services.common.list_generation import Generation, GenerationReader


def test_bumps_are_read_while_the_daemon_holds_the_file(tmp_path: Path) -> None:
    path = tmp_path / "daemon-list.gen"
    reader = GenerationReader(path)
    assert reader.read() is None  # no daemon yet
    daemon = Generation(path)
    first = reader.read()
    assert first is not None
    daemon.bump()
    daemon.bump()
    assert reader.read() == first + 2
    daemon.close()
    assert reader.read() is None  # the daemon gone: nothing kept is trusted
    daemon.bump()  # a change during the stop is no error

    again = Generation(path)  # a restart carries on from the count on file
    assert (reader.read() or 0) > first + 2
    again.close()
    reader.close()


def test_a_file_made_anew_is_found(tmp_path: Path) -> None:
    path = tmp_path / "daemon-list.gen"
    old = Generation(path)
    reader = GenerationReader(path)
    assert reader.read() is not None
    old.close()
    path.unlink()
    new = Generation(path)
    assert reader.read() is None  # the mapped file has no holder: let go of
    assert reader.read() == new.value  # and the new one opened
    new.bump()
    assert reader.read() == new.value
    new.close()
    reader.close()
