"""skiff soak --plot: a PNG drawn from an account's report (matplotlib is the optional 'soak' extra)."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.soak.account import Account


def test_the_plot_is_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from services.soak.plot import draw

    a = Account()
    for i in range(50):
        a.launch_tried()
        a.launch_ok(0.01 * (i % 7 + 1))
    a.fault("kill-daemon", "daemon")
    a.services["daemon"] = [(0.0, 50 << 20, 9, 3), (1.0, 52 << 20, 10, 4)]
    out = tmp_path / "soak.png"
    draw(a.to_json(), a.launch_series, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_tool_does_not_import_matplotlib_unless_asked() -> None:
    import subprocess
    import sys

    code = "import sys, services.soak.cli; print('matplotlib' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.stdout.strip() == "False", done.stderr
