"""pytest plugin of the conformance run: one JSON line per finished test in $CONFORMANCE_RESULTS.

Written test by test (not at the session's end) so that a run cut short by its time bound still
reports what it got through. Importing docker here, before collection, makes the tests use the
docker-py installed in the venv rather than the copy in the source tree they come from.
"""

from __future__ import annotations

import json
import os
from typing import Any

import docker  # noqa: F401 - see the docstring
import pytest

_tests: dict[str, dict[str, Any]] = {}


def _message(report: pytest.TestReport) -> tuple[str, str]:
    """(the exception's first line, the end of the traceback text) of a failed phase."""
    crash = getattr(report.longrepr, "reprcrash", None)
    text = str(report.longrepr)
    if crash is not None:
        first = str(crash.message).strip().splitlines()
    else:
        first = [line for line in text.strip().splitlines() if line.strip()][-1:]
    return (first[0] if first else "?")[:400], text[-4000:]


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    entry = _tests.setdefault(report.nodeid, {"nodeid": report.nodeid, "outcome": "passed", "duration": 0.0})
    entry["duration"] = round(entry["duration"] + report.duration, 3)
    if report.when == "setup" and report.failed:
        entry["outcome"] = "error"
    elif report.skipped:
        entry["outcome"] = "xfailed" if hasattr(report, "wasxfail") else "skipped"
        if not hasattr(report, "wasxfail") and isinstance(report.longrepr, tuple):
            entry["message"] = str(report.longrepr[2])[:400]
    elif report.when == "call":
        if report.failed:
            entry["outcome"] = "failed"
        elif hasattr(report, "wasxfail"):
            entry["outcome"] = "xpassed"
    elif report.when == "teardown" and report.failed and entry["outcome"] == "passed":
        entry["outcome"] = "error"
    if report.failed and "message" not in entry:
        entry["message"], entry["longrepr"] = _message(report)
        entry["phase"] = report.when
    if report.when == "teardown":
        path = os.environ.get("CONFORMANCE_RESULTS")
        if path:
            with open(path, "a", encoding="utf-8") as out:
                out.write(json.dumps(_tests.pop(report.nodeid)) + "\n")
