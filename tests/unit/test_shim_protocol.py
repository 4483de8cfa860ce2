"""The shim protocol's contract (services/common/shimproto.py) and the shim's table of ops."""

from __future__ import annotations

import re

import pytest

from services.common.shimproto import MAX_FRAME, FrameKind, Op, decode_frames, encode, encode_json, rfc3339_nano
from services.shim.server import _OPS


def test_every_op_has_one_handler() -> None:
    assert set(_OPS) == set(Op.ALL)
    assert {Op.PIDS, Op.UPDATE, Op.STATS} <= Op.ALL


def test_frames_round_trip_and_partial_frames_wait() -> None:
    wire = encode_json({"op": "state"}) + encode(FrameKind.STDOUT, b"out")
    buf = bytearray(wire + encode(FrameKind.EOF, b"{}")[:3])
    assert decode_frames(buf) == [(FrameKind.JSON, b'{"op": "state"}'), (FrameKind.STDOUT, b"out")]
    assert len(buf) == 3  # the partial frame stays for the next read
    with pytest.raises(ValueError):
        decode_frames(bytearray(encode(FrameKind.STDIN, b"")[:1] + (MAX_FRAME + 1).to_bytes(4, "big")))


def test_times_are_dockers_rfc3339_with_nanoseconds() -> None:
    assert rfc3339_nano(1_700_000_000_000_000_001) == "2023-11-14T22:13:20.000000001Z"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z", rfc3339_nano())
