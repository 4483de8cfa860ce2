"""The committed generated code (services/gen) matches what scripts/gen-proto makes now."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.py"))}


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    out = tmp_path / "gen"
    # The betterproto plugin lives beside the interpreter (the venv's bin).
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    subprocess.run([str(ROOT / "scripts" / "gen-proto"), str(out)], cwd=ROOT, env=env, check=True,
                   capture_output=True, timeout=120)
    fresh, committed = tree(out), tree(ROOT / "services" / "gen")
    assert sorted(fresh) == sorted(committed), "run scripts/gen-proto: files differ"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"run scripts/gen-proto: stale {stale}"
