"""The daemon's json-file follower against the shim's writer: no entry lost or doubled across rotations."""

from __future__ import annotations

from pathlib import Path

from services.daemon import logs
from services.shim.logfile import JsonFileLog


def _write(log: JsonFileLog, start: int, count: int) -> None:
    for i in range(start, start + count):
        log.write("stdout", f"line-{i}\n".encode())


def test_follower_sees_every_line_across_rotations(tmp_path: Path) -> None:
    path = str(tmp_path / "c-json.log")
    log = JsonFileLog(path, max_size=1000, max_file=3)  # about 15 entries a file
    try:
        seen: list[str] = []
        _write(log, 0, 5)
        entries, cursor = logs.read_all(path)
        seen += [e.data.decode() for e in entries]
        written = 5
        # Between two reads: no rotation, one, two or three (up to max-file: then the followed file is
        # deleted, but the follower holds it open and every newer file is still there: nothing is lost).
        for batch in (3, 20, 30, 1, 33, 25, 30):
            _write(log, written, batch)
            written += batch
            seen += [e.data.decode() for e in logs.read_new(path, cursor)]
        assert seen == [f"line-{i}\n" for i in range(written)]
        assert logs.read_new(path, cursor) == []
    finally:
        log.close()
        logs.Cursor.close(cursor)


def test_follower_starting_before_the_file_exists(tmp_path: Path) -> None:
    path = str(tmp_path / "c-json.log")
    cursor = logs.end_cursor(path)
    assert logs.read_new(path, cursor) == []
    log = JsonFileLog(path, max_size=500, max_file=2)
    try:
        _write(log, 0, 12)
        got = [e.data.decode() for e in logs.read_new(path, cursor)]
        assert got == [f"line-{i}\n" for i in range(12)]
    finally:
        log.close()
        cursor.close()
