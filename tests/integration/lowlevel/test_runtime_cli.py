"""The runtime's command line as runc's: its log records (--log, --log-format, --debug), usage
errors, help and version, exit codes, output formats. Each passes with runc too
(SKIFF_TEST_RUNTIME=runc); what only skiff-lowlevel adds (the error ``kind``) is checked for it alone."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.integration.lowlevel.conftest import Runtime

# logrus's timestamps: RFC 3339 to the second, local time.
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(Z|[+-]\d\d:\d\d)$")
TEXT_RECORD = re.compile(r'^time="([^"]+)" level=(\w+) msg=(?:"((?:[^"\\]|\\.)*)"|(\S+))')


def json_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_failure_is_logged_as_json_with_its_kind(rt: Runtime) -> None:
    log = rt.prefix / "log.json"
    r = rt.cmd("state", "nosuchcontainer", global_args=("--log", str(log), "--log-format", "json"))
    assert r.returncode == 1, r
    # With a log file, stderr still gets the bare message (runc's fatal()).
    assert "does not exist" in r.stderr, r
    errors = [e for e in json_records(log) if e["level"] == "error"]
    assert errors, log.read_text()
    record = errors[-1]
    assert "does not exist" in record["msg"]
    assert RFC3339.match(record["time"]), record
    # Go's compact JSON with sorted keys, as logrus writes it.
    line = [raw for raw in log.read_text().splitlines() if '"error"' in raw][-1].replace(record["msg"], "")
    assert ": " not in line and ", " not in line, line
    if not rt.is_runc:
        assert record["kind"] == "not_found", record
        assert list(record) == sorted(record)


def test_failure_in_the_container_init_keeps_its_kind(rt: Runtime) -> None:
    """An error raised in the forked init crosses to the parent, then to the log, typed."""
    log = rt.prefix / "log.json"

    def bad_device(spec: dict) -> None:
        spec["linux"]["devices"] = [{"path": "/dev/bogus", "type": "x", "major": 1, "minor": 3}]

    cid, bundle, _ = rt.bundle(["true"], edit=bad_device)
    argv_log = ("--log", str(log), "--log-format", "json")
    r = rt.cmd("create", "--bundle", str(bundle), cid, global_args=argv_log)
    assert r.returncode != 0, r
    errors = [e for e in json_records(log) if e["level"] == "error"]
    assert errors, log.read_text()
    if not rt.is_runc:
        assert errors[-1]["kind"] == "invalid_argument", errors[-1]
    rt.assert_nothing_left(cid, bundle)


def test_failure_without_log_is_a_logrus_text_line_on_stderr(rt: Runtime) -> None:
    r = rt.cmd("state", "nosuchcontainer")
    assert r.returncode == 1, r
    m = TEXT_RECORD.match(r.stderr.strip().splitlines()[-1])
    assert m, r
    assert RFC3339.match(m.group(1)) and m.group(2) == "error", r
    assert "does not exist" in (m.group(3) or m.group(4)), r


def test_failure_logged_as_text_to_a_file(rt: Runtime) -> None:
    log = rt.prefix / "log.txt"
    r = rt.cmd("state", "nosuchcontainer", global_args=("--log", str(log)))
    assert r.returncode == 1, r
    assert "does not exist" in r.stderr and "level=" not in r.stderr, r
    m = TEXT_RECORD.match(log.read_text().strip().splitlines()[-1])
    assert m and m.group(2) == "error", log.read_text()


def test_bad_log_format_is_refused(rt: Runtime) -> None:
    r = rt.cmd("list", global_args=("--log-format", "xml"))
    assert r.returncode == 1, r
    assert "invalid log-format: xml" in r.stderr, r
