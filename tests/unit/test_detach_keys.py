"""Detach keys as dockerd reads them (the CLI's ``ctrl-x,a`` notation) and finds them in a terminal's input."""

from __future__ import annotations

import pytest

from services.apiserver.stdin import DEFAULT_DETACH_KEYS, DetachWatch, parse_detach_keys
from services.common.errors import InvalidArgument


@pytest.mark.parametrize(("text", "keys"), [
    ("ctrl-p,ctrl-q", b"\x10\x11"),
    ("ctrl-@", b"\x00"),
    ("ctrl-[,ctrl-\\,ctrl-],ctrl-^,ctrl-_", b"\x1b\x1c\x1d\x1e\x1f"),
    ("a,b", b"ab"),
    ("ctrl-x,x", b"\x18x"),
    ("DEL", b"\x7f"),
])
def test_parsed(text: str, keys: bytes) -> None:
    assert parse_detach_keys(text) == keys


@pytest.mark.parametrize("text", ["ctrl-", "ctrl-Z", "ab", "é", "ctrl-p,", "", "del"])
def test_refused(text: str) -> None:
    with pytest.raises(InvalidArgument, match=r"Invalid detach keys \(.*\) provided"):
        parse_detach_keys(text)


def test_sequence_found_across_chunks_and_swallowed() -> None:
    watch = DetachWatch(DEFAULT_DETACH_KEYS)
    assert watch.feed(b"ab\x10") == (b"ab", False)  # a partial match is held back
    assert watch.feed(b"\x11tail") == (b"", True)  # complete: it and what follows never go in


def test_false_start_forwarded() -> None:
    watch = DetachWatch(DEFAULT_DETACH_KEYS)
    assert watch.feed(b"\x10") == (b"", False)
    assert watch.feed(b"x") == (b"\x10x", False)
    # A held key followed by the sequence's own start: the held one goes, the new one may begin it.
    assert watch.feed(b"\x10\x10") == (b"\x10", False)
    assert watch.feed(b"\x11") == (b"", True)


def test_single_key() -> None:
    assert DetachWatch(b"\x10").feed(b"abc\x10def") == (b"abc", True)
