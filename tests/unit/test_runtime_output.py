"""A runtime's failure read back by the shim: skiff-lowlevel's logged kind is carried as is; only
foreign runtimes' words are guessed from (services/common/runtime_output.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from services.common.runtime_output import guess_kind, runtime_failure, runtime_message

LOWLEVEL = str(Path(__file__).resolve().parents[2] / "services" / "lowlevel" / "__main__.py")


def test_logged_kind_wins_over_the_words() -> None:
    log = (b'{"level":"info","msg":"starting"}\n'
           b'{"level":"error","msg":"no such file or directory: cpu.max","kind":"internal"}\n')
    assert runtime_failure(log, b"") == ("internal", "no such file or directory: cpu.max")


def test_foreign_runtime_words_are_guessed() -> None:
    # runc logs no kind: its words decide, as before.
    log = b'{"level":"error","msg":"container \\"x\\" does not exist","time":"2024-01-01T00:00:00Z"}\n'
    assert runtime_failure(log, b"") == ("not_found", 'container "x" does not exist')
    assert runtime_failure(b"", b"exec: \"/no\": stat /no: no such file or directory\n")[0] == "invalid_argument"
    assert guess_kind("cgroup busy") == "failed_precondition"


def test_an_unknown_kind_is_not_trusted() -> None:
    log = b'{"level":"error","msg":"already exists","kind":"teapot"}\n'
    assert runtime_failure(log, b"") == ("already_exists", "already exists")


def test_runtime_message_keeps_the_last_three_lines() -> None:
    assert runtime_message(b"a\nb\n\nc\nd\n") == "b; c; d"
    assert runtime_message(b'plain\n{"level":"warning","msg":"w"}\n{"level":"error","msg":"e"}\n',
                           errors_only=True) == "e"


def test_lowlevel_logs_its_error_kind(tmp_path: Path) -> None:
    # The other end of the contract: skiff-lowlevel's --log-format json record carries the kind.
    log = tmp_path / "runtime.log"
    done = subprocess.run([sys.executable, "-I", "-S", LOWLEVEL, "--root", str(tmp_path / "root"), "--log", str(log),
                           "--log-format", "json", "state", "no-such-container"], capture_output=True, timeout=30)
    assert done.returncode == 1
    record = json.loads(log.read_text().splitlines()[-1])
    assert record["level"] == "error" and record["kind"] == "not_found", record
    assert runtime_failure(log.read_bytes(), done.stderr)[0] == "not_found"
