"""services/common/cgroupfs.py read on this host: the one parser of /proc/<pid>/cgroup."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from services.common import cgroupfs


def test_memberships_and_the_files_they_name() -> None:
    lines = cgroupfs.memberships()
    assert lines and all(path.startswith("/") for _, _, path in lines)
    assert cgroupfs.memberships(os.getpid()) == lines
    procs = cgroupfs.own_procs_file()
    assert procs is not None and Path(procs).is_file()
    assert str(os.getpid()) in Path(procs).read_text().split()
    memory = cgroupfs.memory_cgroup(os.getpid())
    assert memory and any(p.name.startswith("memory.") for p in Path(memory).iterdir())
    assert cgroupfs.memory_cgroup(2**22 + 1) == ""  # no such pid


def test_keep_switched_stops_when_told_and_refuses_a_missing_file() -> None:
    calls = []
    procs = cgroupfs.own_procs_file()
    assert procs is not None
    assert cgroupfs.keep_switched(procs, str(os.getpid()).encode(), lambda: calls.append(1) and len(calls) < 3)
    assert len(calls) == 1  # the first answer (None) already stops it
    assert not cgroupfs.keep_switched("/nonexistent/cgroup.procs", b"1", lambda: True)


def test_stays_light_for_the_runtime() -> None:
    # skiff-lowlevel's prime imports it first thing: posix and time only, nothing of os.
    root = str(Path(__file__).resolve().parents[2])
    code = (f"import sys; sys.path.insert(0, {root!r}); before = set(sys.modules); "
            "import services.common.cgroupfs; print(' '.join(sorted(set(sys.modules) - before)))")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, check=True).stdout
    assert set(out.split()) <= {"services", "services.common", "services.common.cgroupfs", "time"}, out
