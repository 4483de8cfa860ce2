"""The installed ``skiff-lowlevel`` launcher (a /bin/sh script): called through a link named runc it
answers as runc, as runc's own bats suite expects (sh has no ``exec -a``: the name travels in
SKIFF_LOWLEVEL_NAME)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

LAUNCHER = Path(sys.prefix) / "bin" / "skiff-lowlevel"


def test_a_link_named_runc_answers_as_runc(tmp_path: Path) -> None:
    if not LAUNCHER.exists():
        pytest.skip("skiff-lowlevel is not installed in this environment")
    link = tmp_path / "runc"
    link.symlink_to(LAUNCHER)
    version = subprocess.run([str(link), "-v"], capture_output=True, text=True, timeout=30)
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith("runc version "), version.stdout
    usage = subprocess.run([str(link), "-h"], capture_output=True, text=True, timeout=30)
    assert usage.stdout.splitlines()[1].strip().startswith("runc - Open Container Initiative runtime")
    direct = subprocess.run([str(LAUNCHER), "-v"], capture_output=True, text=True, timeout=30)
    assert direct.stdout.startswith("skiff-lowlevel version "), direct.stdout
