"""The apiserver's shared readers of Docker's query parameters: filters in both of Docker's forms,
since/until in each form the CLI sends, and their refusals (InvalidArgument, a 400)."""

from __future__ import annotations

import time

import pytest

from services.apiserver.params import parse_filters, since_ns
from services.common.errors import InvalidArgument


def test_filters_in_both_forms() -> None:
    assert parse_filters(None) == {}
    assert parse_filters('{"name": ["a", "b"]}') == {"name": ["a", "b"]}
    assert parse_filters('{"label": {"x=1": true, "y": false}}') == {"label": ["x=1"]}


@pytest.mark.parametrize("raw", ["not json", "[1]", '{"name": 5}'])
def test_bad_filters_are_the_clients_error(raw: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_filters(raw)


def test_since_forms() -> None:
    assert since_ns(None, "since") == 0
    assert since_ns("", "since") == 0
    assert since_ns("1700000000", "since") == 1_700_000_000 * 10**9
    assert since_ns("1700000000.5", "since") == 1_700_000_000_500_000_000
    assert since_ns("2023-11-14T22:13:20Z", "since") == 1_700_000_000 * 10**9
    before = time.time_ns()
    ago = since_ns("10m", "since")
    assert before - 600 * 10**9 - 10**9 <= ago <= time.time_ns() - 600 * 10**9


def test_since_refuses_what_it_cannot_read() -> None:
    with pytest.raises(InvalidArgument, match="invalid value for until"):
        since_ns("yesterday", "until")
