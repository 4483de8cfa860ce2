"""A list's rows (dockermodel/list_rows.py): the same JSON as the daemon's full render, through the
lane's encoding unchanged (control characters in labels included), and Status's text kept only as
long as it reads the same."""

from __future__ import annotations

import json
import time

from services.daemon.summaries import Summaries
from services.dockermodel.list_rows import decode_rows, encode_rows, render_rows
from services.dockermodel.times import human_duration, human_duration_next
from services.gen.skiff.daemon.v1 import Container, State


def _record(name: str, status: State, started: float) -> Container:
    c = Container(id=name * 8, name=name, image_ref="busybox", created="2026-12-06T09:00:00.000000000Z",
                  path_args=["sleep", "300"])
    c.config.labels = {"odd": "\x1e\x1f\0", "ünï": "çødé"}
    c.state.status = status
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(started)) + ".500000000Z"
    c.state.started_at = c.state.finished_at = stamp
    c.state.exit_code = 3
    return c


def test_rows_through_the_lane_render_as_the_daemon_does() -> None:
    now = int(time.time()) + 0.6  # the records' times are whole seconds and a half: 5.1 s, not 4.9
    records = [_record("a", State.RUNNING, int(now) - 5), _record("b", State.EXITED, int(now) - 4000),
               _record("c", State.CREATED, int(now)), _record("d", State.PAUSED, int(now) - 100)]
    summaries = Summaries()
    rows = summaries.rows(records, {records[2].id: ["/a/c"]}, {r.id: 1 for r in records})
    generation, decoded = decode_rows(encode_rows(42, rows))
    assert (generation, decoded) == (42, rows)
    body, until = render_rows(decoded, now)
    entries = json.loads(body)
    assert [e["Status"] for e in entries] == ["Up 5 seconds", "Exited (3) About an hour ago", "Created",
                                              "Up About a minute (Paused)"]
    assert entries[0]["Labels"] == {"odd": "\x1e\x1f\0", "ünï": "çødé"}
    assert entries[2]["Names"] == ["/c", "/a/c"]
    assert now < until <= now + 1  # the youngest running one's seconds move first


def test_a_kept_status_stands_until_its_text_would_change() -> None:
    for age in (0.2, 1.0, 59.5, 61.0, 3599.0, 5400.0, 7000.0, 200000.0):
        change = human_duration_next(age)
        assert change > age
        assert human_duration(age) == human_duration(change - 1e-6)
