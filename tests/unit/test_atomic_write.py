"""common.atomic.atomic_write: the one temp-file-and-rename write, durable or not."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.common.atomic import atomic_write


@pytest.mark.parametrize("durable", [True, False])
def test_replaces_whole_file_and_leaves_no_temp(tmp_path: Path, durable: bool) -> None:
    target = tmp_path / "state.json"
    target.write_bytes(b"old")
    atomic_write(target, b"new" * 100_000, durable=durable)
    assert target.read_bytes() == b"new" * 100_000
    assert os.listdir(tmp_path) == ["state.json"]
    assert (target.stat().st_mode & 0o777) == 0o600


def test_failed_write_keeps_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_bytes(b"old")
    with pytest.raises(TypeError):
        atomic_write(target, 42)  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["state.json"]


def test_import_is_light() -> None:
    """The shim and lowlevel import it on every launch: it must pull in nothing beyond os."""
    code = (
        "import sys; before = set(sys.modules); import services.common.atomic; "
        "new = set(sys.modules) - before - {'services', 'services.common', 'services.common.atomic'}; "
        "print(sorted(new))"
    )
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[2], check=True)
    allowed = {"__future__", "_collections_abc", "_stat", "genericpath", "os", "os.path", "posixpath", "stat"}
    assert set(eval(out.stdout)) <= allowed, out.stdout
