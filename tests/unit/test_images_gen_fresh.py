"""The committed generated code of images.proto matches what scripts/gen-proto makes now."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    subprocess.run([str(ROOT / "scripts" / "gen-proto"), str(tmp_path / "gen")], check=True, env=env,
                   capture_output=True, timeout=120)
    rel = Path("skiff") / "highlevel" / "v1" / "__init__.py"
    fresh = (tmp_path / "gen" / rel).read_text()
    assert fresh == (ROOT / "services" / "gen" / rel).read_text(), "run scripts/gen-proto and commit services/gen"
