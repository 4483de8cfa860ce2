"""The daemon's kept list entries (daemon/summaries.py): byte for byte what a fresh render gives,
made again when the record is saved, renamed or linked, with State and Status current at every call."""

from __future__ import annotations

import json
import time

from services.daemon.summaries import Summaries
from services.dockermodel.render import container_summary
from services.gen.skiff.daemon.v1 import Container, EndpointSettings, PortBinding, State


def _record(name: str, status: State = State.RUNNING) -> Container:
    c = Container(id=name * 8, name=name, image_ref="busybox", image_id="sha256:" + "b" * 64,
                  created="2026-12-06T09:00:00.000000000Z", path_args=["sh", "-c", "sleep 300"])
    c.config.labels = {"a": "b", "State": "running"}  # a label named State does not confuse the splice
    c.config.exposed_ports = ["80/tcp"]
    c.config.host.network_mode = "bridge"
    c.state.status = status
    c.state.started_at = "2026-12-06T09:00:00.000000000Z"
    c.state.finished_at = "2026-12-06T09:00:05.000000000Z"
    c.network_settings.endpoints = [EndpointSettings(network_name="bridge", ip_address="10.0.0.2")]
    c.network_settings.ports = [PortBinding(container_port="80/tcp", host_ip="0.0.0.0", host_port="8080")]
    return c


def _fresh(records: list[Container], more: dict[str, list[str]] | None = None) -> bytes:
    entries = []
    for r in records:
        entry = container_summary(r)
        if more and r.id in more:
            entry["Names"] = [*entry["Names"], *more[r.id]]
        entries.append(entry)
    return json.dumps(entries, separators=(",", ":")).encode()


def test_kept_entries_are_a_fresh_render_byte_for_byte() -> None:
    records = [_record("a"), _record("b", State.EXITED), _record("c", State.CREATED), _record("d", State.PAUSED)]
    versions = {r.id: 1 for r in records}
    summaries = Summaries()
    more = {records[1].id: ["/a/alias"]}
    assert summaries.render(records, more, versions) == _fresh(records, more)
    assert summaries.render(records, more, versions) == _fresh(records, more)  # from what was kept


def test_a_saved_change_shows_and_state_status_always_do() -> None:
    record = _record("a")
    versions = {record.id: 1}
    summaries = Summaries()
    summaries.render([record], None, versions)
    record.state.status = State.EXITED  # not saved yet: State and Status follow at once
    record.network_settings.ports = []
    listed = json.loads(summaries.render([record], None, versions))[0]
    assert (listed["State"], listed["Status"].split(" ")[0]) == ("exited", "Exited")
    versions[record.id] = 2  # saved: the rest follows
    assert summaries.render([record], None, versions) == _fresh([record])
    record.name = "renamed"
    assert json.loads(summaries.render([record], None, versions))[0]["Names"] == ["/renamed"]


def test_a_label_carrying_the_mark_is_rendered_whole() -> None:
    record = _record("a")
    record.config.labels = {"State": "\0skiff-list-state\0"}
    record.network_settings.ports = []
    assert Summaries().render([record], None, {record.id: 1}) == _fresh([record])


def test_status_moves_with_time_from_a_kept_entry() -> None:
    record = _record("a")
    record.state.started_at = time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime(time.time() - 3))
    summaries = Summaries()
    first = json.loads(summaries.render([record], None, {record.id: 1}))[0]["Status"]
    record.state.started_at = time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime(time.time() - 7200))
    assert first != json.loads(summaries.render([record], None, {record.id: 1}))[0]["Status"]
