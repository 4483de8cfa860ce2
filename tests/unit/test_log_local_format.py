"""dockerd's local log format: the shim's hand-made protobuf encoder checked against the protobuf library
(dockerd's LogEntry message built at test time), the daemon's decoder, rotation with gzip, and the
daemon's reader (whole, across compressed rotations, followed)."""

from __future__ import annotations

import gzip
import json
import os
import struct
import time
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from services.daemon import locallog as reader
from services.daemon import logs
from services.gen.skiff.daemon.v1 import LogStream
from services.shim import locallog
from services.shim.locallog import LocalLog
from services.shim.logfile import JsonFileLog
from services.shim.rotation import MAX_LINE


def _entry_class() -> type:
    """dockerd's api/types/plugins/logdriver/entry.proto, as a message class of the protobuf library."""
    file = descriptor_pb2.FileDescriptorProto(name="skiff_test_entry.proto", package="skifftest", syntax="proto3")
    meta = file.message_type.add(name="PartialLogEntryMetadata")
    f = descriptor_pb2.FieldDescriptorProto
    for name, number, kind in (("last", 1, f.TYPE_BOOL), ("id", 2, f.TYPE_STRING), ("ordinal", 3, f.TYPE_INT32)):
        meta.field.add(name=name, number=number, type=kind, label=f.LABEL_OPTIONAL)
    entry = file.message_type.add(name="LogEntry")
    for name, number, kind in (("source", 1, f.TYPE_STRING), ("time_nano", 2, f.TYPE_INT64),
                               ("line", 3, f.TYPE_BYTES), ("partial", 4, f.TYPE_BOOL)):
        entry.field.add(name=name, number=number, type=kind, label=f.LABEL_OPTIONAL)
    entry.field.add(name="partial_log_metadata", number=5, type=f.TYPE_MESSAGE, label=f.LABEL_OPTIONAL,
                    type_name=".skifftest.PartialLogEntryMetadata")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("skifftest.LogEntry"))


LogEntry = _entry_class()

CASES = [
    ("stdout", 1_700_000_000_123_456_789, b"hello", None),
    ("stderr", 1, b"", None),
    ("", 0, b"x" * 300, None),
    ("stdout", -5, b"neg time", None),
    ("stdout", 2**62, "ünïcode".encode(), ("a" * 64, 1, False)),
    ("stderr", 42, b"tail", ("b" * 64, 300, True)),
    ("stdout", 42, b"", ("", 0, False)),
]


@pytest.mark.parametrize(("source", "time_nano", "line", "partial"), CASES)
def test_encoder_matches_protobuf(source: str, time_nano: int, line: bytes, partial: tuple | None) -> None:
    ours = locallog.encode_entry(source, time_nano, line, partial)
    theirs = LogEntry(source=source, time_nano=time_nano, line=line, partial=partial is not None)
    if partial is not None:
        theirs.partial_log_metadata.id = partial[0]
        theirs.partial_log_metadata.ordinal = partial[1]
        theirs.partial_log_metadata.last = partial[2]
    assert ours == theirs.SerializeToString(deterministic=True)
    parsed = LogEntry.FromString(ours)
    assert (parsed.source, parsed.time_nano, parsed.line) == (source, time_nano, line)
    decoded = reader.decode_entry(ours)
    assert (decoded.source, decoded.time_nano, decoded.line, decoded.partial) == \
        (source, time_nano, line, partial is not None)
    if partial is not None:
        assert (decoded.part_id, decoded.ordinal, decoded.last) == partial


def test_decoder_skips_unknown_fields_and_refuses_truncation() -> None:
    known = LogEntry(source="stdout", time_nano=7, line=b"abc").SerializeToString()
    # field 9 varint, field 10 fixed64, field 11 bytes, field 12 fixed32: skipped
    extra = b"\x48\x05" + b"\x51" + b"\x00" * 8 + b"\x5a\x02zz" + b"\x65" + b"\x00" * 4
    decoded = reader.decode_entry(known + extra)
    assert (decoded.source, decoded.time_nano, decoded.line) == ("stdout", 7, b"abc")
    with pytest.raises(reader.DecodeError):
        reader.decode_entry(known[:-1])


def test_frames_split_whole_records_only() -> None:
    one = locallog.frame(locallog.encode_entry("stdout", 1, b"one"))
    two = locallog.frame(locallog.encode_entry("stderr", 2, b"two"))
    assert one[:4] == one[-4:] == struct.pack(">I", len(one) - 8)
    data = one + two
    for cut in range(len(data) + 1):
        messages, used = reader.split(data[:cut])
        whole = 2 if cut == len(data) else 1 if cut >= len(one) else 0
        assert len(messages) == whole and used == (len(one) if whole == 1 else len(data) if whole == 2 else 0)
    # sizes that disagree (a corrupt frame) end the reading there
    bad = one + struct.pack(">I", 3) + b"abc" + struct.pack(">I", 4)
    assert reader.split(bad) == ([one[4:-4]], len(one))


def _records(path: str) -> list:
    data = Path(path).read_bytes()
    messages, used = reader.split(data)
    assert used == len(data)
    return [reader.decode_entry(m) for m in messages]


def test_writer_lines_partials_and_stream_end(tmp_path: Path) -> None:
    path = str(tmp_path / "container.log")
    log = LocalLog(path, 0, 1, False)
    before = time.time_ns()
    log.write("stdout", b"first\nsec")
    log.write("stdout", b"ond\n")
    log.write("stderr", b"e" * (MAX_LINE * 2 + 10) + b"\n")  # cut in three pieces
    log.write("stdout", b"no newline at the end")
    log.close()
    records = _records(path)
    assert [(r.source, r.line, r.partial) for r in records[:2]] == \
        [("stdout", b"first", False), ("stdout", b"second", False)]
    pieces = records[2:5]
    assert [len(r.line) for r in pieces] == [MAX_LINE, MAX_LINE, 10]
    assert {r.part_id for r in pieces} == {pieces[0].part_id} and len(pieces[0].part_id) == 64
    assert [(r.partial, r.ordinal, r.last) for r in pieces] == [(True, 1, False), (True, 2, False), (True, 3, True)]
    assert len({r.time_nano for r in pieces}) == 1  # the first piece's time, as dockerd's copier
    end = records[5]
    assert (end.line, end.partial, end.last, end.ordinal) == (b"no newline at the end", True, False, 1)
    assert all(before <= r.time_nano <= time.time_ns() for r in records)
    entries, _cursor = logs.read_all(path, logs.LOCAL)
    _cursor.close()
    text = b"".join(e.data for e in entries)
    assert text == b"first\nsecond\n" + b"e" * (MAX_LINE * 2 + 10) + b"\nno newline at the end"
    assert [e.stream for e in entries[:2]] == [LogStream.STDOUT] * 2 and entries[2].stream == LogStream.STDERR
    assert entries[0].time.endswith("Z") and len(entries[0].time) == 30


def test_rotation_compresses_with_dockerd_header(tmp_path: Path) -> None:
    path = str(tmp_path / "container.log")
    log = LocalLog(path, max_size=2000, max_file=3, compress=True)
    for i in range(400):
        log.write("stdout", f"line-{i:04d}\n".encode())
    log.close()
    names = sorted(os.listdir(tmp_path))
    assert names == ["container.log", "container.log.1.gz", "container.log.2.gz"]
    raw = (tmp_path / "container.log.1.gz").read_bytes()
    assert raw[:4] == b"\x1f\x8b\x08\x04"  # gzip with FEXTRA
    size = int.from_bytes(raw[10:12], "little")
    meta = json.loads(raw[12:12 + size])
    assert meta["lastTime"].endswith("Z")
    newest = _records_from(gzip.decompress(raw))
    assert meta["lastTime"][:19] == time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(newest[-1].time_nano // 10**9))
    entries, cursor = logs.read_all(path, logs.LOCAL)
    cursor.close()
    lines = [e.data.decode() for e in entries]
    # Whatever the last three files hold: the newest lines, in order, none doubled.
    assert lines == [f"line-{i:04d}\n" for i in range(400 - len(lines), 400)] and len(lines) > 100


def _records_from(data: bytes) -> list:
    return [reader.decode_entry(m) for m in reader.split(data)[0]]


def test_follower_across_compressed_rotations(tmp_path: Path) -> None:
    path = str(tmp_path / "container.log")
    log = LocalLog(path, max_size=1000, max_file=3, compress=True)
    try:
        cursor = logs.end_cursor(path, logs.LOCAL)
        seen: list[str] = []
        written = 0
        # At most one rotation between two reads (about 22 records a file): a file compressed away after
        # a second one is gone for a follower, as for dockerd's (it reopens the live file).
        for batch in (5, 15, 1, 12, 3, 15, 15, 15, 2):
            for i in range(written, written + batch):
                log.write("stdout", f"line-{i}\n".encode())
            written += batch
            seen += [e.data.decode() for e in logs.read_new(path, cursor, logs.LOCAL)]
        assert seen == [f"line-{i}\n" for i in range(written)]
    finally:
        log.close()
        cursor.close()


def test_end_cursor_skips_a_record_being_written(tmp_path: Path) -> None:
    path = tmp_path / "container.log"
    whole = locallog.frame(locallog.encode_entry("stdout", 5, b"done"))
    cut = locallog.frame(locallog.encode_entry("stdout", 6, b"being written"))[:9]
    path.write_bytes(whole + cut)
    cursor = logs.end_cursor(str(path), logs.LOCAL)
    assert cursor.offset == len(whole)
    entries, cursor = logs.read_all(str(path), logs.LOCAL)
    assert [e.data for e in entries] == [b"done\n"] and cursor.offset == len(whole)


def test_json_file_compress_and_attrs(tmp_path: Path) -> None:
    path = str(tmp_path / "c-json.log")
    log = JsonFileLog(path, max_size=500, max_file=2, compress=True, attrs={"tag": "web", "FOO": "bar"})
    for i in range(60):
        log.write("stdout", f"line-{i}\n".encode())
    log.close()
    assert sorted(os.listdir(tmp_path)) == ["c-json.log", "c-json.log.1.gz"]
    first = json.loads(Path(path).read_text().splitlines()[0])
    assert list(first) == ["log", "stream", "attrs", "time"] and first["attrs"] == {"tag": "web", "FOO": "bar"}
    entries, cursor = logs.read_all(path)
    cursor.close()
    lines = [e.data.decode() for e in entries]
    assert lines == [f"line-{i}\n" for i in range(60 - len(lines), 60)] and len(lines) > 5
