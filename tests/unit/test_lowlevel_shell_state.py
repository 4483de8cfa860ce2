"""state.save_shell_state: the file the installed command's shell path sources (``.``) must give back
the init's pid and start time and every cgroup folder as written, whatever the folder names hold."""

from __future__ import annotations

import subprocess
from pathlib import Path

from services.lowlevel import state


def test_the_shell_reads_back_what_was_written(tmp_path: Path) -> None:
    st = state.ContainerState("c1", str(tmp_path), str(tmp_path / "rootfs"), "2026-01-01T00:00:00Z", pid=4321,
                              pid_start=98765)
    state.make_container_dir(str(tmp_path), "c1")
    dirs = ["/sys/fs/cgroup/pids/a b", "/sys/fs/cgroup/memory/it's", "/x/$(touch pwned)`id`\\*", "/y/\"q\"\nz"]
    state.save_shell_state(str(tmp_path), st, dirs)
    script = ('. "$1"; printf "%s\\n" "$shell_state" "$init_pid" "$init_started"; '
              'for d in "$@"; do printf "<%s>" "$d"; done')
    done = subprocess.run(["sh", "-c", script, "sh", str(tmp_path / "c1" / state.SHELL_STATE)],
                          capture_output=True, text=True, timeout=10, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    version, pid, started, listed = done.stdout.split("\n", 3)
    assert [version, pid, started] == [state.SHELL_STATE_VERSION, "4321", "98765"]
    assert listed == "".join(f"<{d}>" for d in dirs)
    assert not (tmp_path / "pwned").exists()
