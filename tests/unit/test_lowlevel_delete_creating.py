"""``delete --force`` of a container whose create was cut short (state "creating", no pid yet) must
not signal pid 0: kill(0, SIGKILL) is the caller's whole process group (it took the CI run down)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from services.common.config import resolve_runtime
from services.lowlevel import state


def test_delete_force_of_a_creating_container_spares_the_callers_group(tmp_path: Path) -> None:
    root = tmp_path / "state"
    st = state.ContainerState("cut-short", str(tmp_path), str(tmp_path / "rootfs"), "2026-01-01T00:00:00Z",
                              cgroups_path=f"/skiff-unit-{tmp_path.name}/cut-short")
    state.make_container_dir(str(root), st.id)
    state.save(str(root), st)
    runtime = " ".join(resolve_runtime("skiff-lowlevel"))
    # A session of its own: a sleeper beside the runtime in one process group, alive afterwards.
    script = (f"sleep 30 & {runtime} --root {root} delete --force cut-short; echo rc=$?; "
              "kill -0 $! && echo alive; kill $!")
    done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60, start_new_session=True)
    assert "rc=0" in done.stdout and "alive" in done.stdout, (done.stdout, done.stderr)
    assert not (root / "cut-short").exists()
