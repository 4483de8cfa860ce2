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


def program(rt: Runtime) -> str:
    """The name help and version speak of: runc's, or skiff-lowlevel's (run as python … __main__.py)."""
    name = Path(rt.argv[-1]).name
    return "skiff-lowlevel" if name.endswith(".py") else name


COMMANDS = ("checkpoint", "create", "delete", "events", "exec", "kill", "list", "pause", "ps", "restore",
            "resume", "run", "spec", "start", "state", "update", "features")


def test_help_globally_and_per_command(rt: Runtime) -> None:
    prog = program(rt)
    for argv in (["-h"], ["--help"], ["help"], []):
        r = rt.cmd(*argv).ok()
        lines = r.stdout.splitlines()
        assert lines[0] == "NAME:", r
        assert lines[1].startswith(f"   {prog} - Open Container Initiative runtime"), r
    for command in COMMANDS:
        for argv in ([command, "-h"], [command, "--help"], ["help", command]):
            r = rt.cmd(*argv).ok()
            lines = r.stdout.splitlines()
            assert lines[0] == "NAME:" and lines[1].startswith(f"   {prog} {command} - "), r


def test_unknown_command_has_no_help_topic(rt: Runtime) -> None:
    for argv in (["foo", "-h"], ["foo"], ["help", "foo"]):
        r = rt.cmd(*argv)
        assert r.returncode == 3, r
        assert "No help topic for 'foo'" in r.stderr, r


def test_version(rt: Runtime) -> None:
    prog = program(rt)
    for flag in ("-v", "--version"):
        lines = rt.cmd(flag).ok().stdout.splitlines()
        assert re.match(rf"^{re.escape(prog)} version \d+\.\d+\.\d+", lines[0]), lines
        assert lines[1].startswith("commit: "), lines
        assert re.match(r"^spec: \d+\.\d+\.\d+", lines[2]), lines


def unquoted(text: str) -> str:
    """A logrus text record's message as written (its quotes are escaped in msg="...")."""
    return text.replace('\\"', '"')


def test_usage_errors_print_the_help_and_exit_1(rt: Runtime) -> None:
    r = rt.cmd("start")
    assert r.returncode == 1, r
    assert r.stdout.startswith("Incorrect Usage.\n\nNAME:\n"), r
    assert '"start" requires exactly 1 argument(s)' in unquoted(r.stderr), r
    r = rt.cmd("kill", "a", "b", "c")
    assert r.returncode == 1 and '"kill" requires a maximum of 2 argument(s)' in unquoted(r.stderr), r
    r = rt.cmd("exec")
    assert r.returncode == 1 and '"exec" requires a minimum of 1 argument(s)' in unquoted(r.stderr), r
    r = rt.cmd("list", "extra")
    assert r.returncode == 1 and '"list" requires exactly 0 argument(s)' in unquoted(r.stderr), r
    r = rt.cmd("state", "--bogus", "x")
    assert r.returncode == 1, r
    assert r.stdout.startswith("Incorrect Usage: flag provided but not defined: -bogus\n\nNAME:\n"), r
    assert "flag provided but not defined: -bogus" in r.stderr, r
    r = rt.cmd("--bogus", "state", "x")
    assert r.returncode == 1, r
    assert r.stdout.startswith("Incorrect Usage. flag provided but not defined: -bogus\n\nNAME:\n"), r
    r = rt.cmd("run", "--preserve-fds", "x", "c1")
    assert r.returncode == 1, r
    assert r.stdout.startswith('Incorrect Usage: invalid value "x" for flag -preserve-fds: parse error'), r


def test_exec_exit_codes(rt: Runtime) -> None:
    """The process's own code, or 255 when the exec itself failed (runc's exec.bats)."""
    cid, _, _ = rt.start_container(["sleep", "60"])
    assert rt.cmd("exec", cid, "false").returncode == 1
    assert rt.cmd("exec", cid, "sh", "-c", "exit 42").returncode == 42
    missing_folder = rt.prefix / "no" / "such" / "folder" / "pid"
    assert rt.cmd("exec", "--pid-file", str(missing_folder), cid, "true").returncode == 255
    assert rt.cmd("exec", cid, "no-such-binary").returncode == 255
    assert rt.cmd("exec", "no_such_container", "true").returncode == 255


def test_create_with_a_pid_file_in_a_missing_folder_fails_with_nothing_left(rt: Runtime) -> None:
    cid, bundle, _ = rt.bundle(["sleep", "60"])
    r = rt.create(cid, bundle, "--pid-file", str(rt.prefix / "no" / "such" / "pid"), out=bundle.parent / "out")
    assert r.returncode == 1, r
    rt.assert_nothing_left(cid, bundle)


def test_exec_refuses_a_paused_container(rt: Runtime) -> None:
    cid, _, _ = rt.start_container(["sleep", "60"])
    rt.cmd("pause", cid).ok()
    try:
        r = rt.cmd("exec", cid, "echo", "ok")
        assert r.returncode == 255, r
        assert "cannot exec in a paused container" in r.stderr, r
    finally:
        rt.cmd("resume", cid).ok()


# The steps runc's debug records name (its debug.bats looks for them); skiff-lowlevel names its own
# steps alike: the namespaces' set-up, the init's start, the init's signal that it is ready.
DEBUG_STEPS = ("nsexec container setup", "child process in init()", "init: closing the pipe to signal completion")


def hello_bundle(rt: Runtime) -> tuple[str, Path]:
    cid, bundle, _ = rt.bundle(["echo", "Hello World"])
    return cid, bundle


def test_debug_records_go_to_stderr(rt: Runtime) -> None:
    cid, bundle = hello_bundle(rt)
    r = rt.cmd("run", "--bundle", str(bundle), cid, global_args=("--debug",)).ok()
    assert "Hello World" in r.stdout, r
    assert "level=debug" in r.stderr, r
    for step in DEBUG_STEPS:
        assert step in r.stderr, (step, r)


def test_debug_records_go_to_the_log_file_as_text_or_json(rt: Runtime) -> None:
    for fmt, marker in (("text", "level=debug"), ("json", '"level":"debug"')):
        cid, bundle = hello_bundle(rt)
        log = rt.prefix / f"debug.{fmt}"
        r = rt.cmd("run", "--bundle", str(bundle), cid, global_args=("--log", str(log), "--log-format", fmt, "--debug"))
        r.ok()
        assert "level=debug" not in r.stderr and "level=debug" not in r.stdout, r
        text = log.read_text()
        assert marker in text, text
        for step in DEBUG_STEPS:
            assert step in text, (step, text)
        if fmt == "json":
            for record in json_records(log):
                assert {"level", "msg", "time"} <= set(record), record
