"""skiff-lowlevel's structure: the grammar below the entry point and the commands (no circle), the
pure seccomp schema in common (the daemon imports no runtime module), a launch that stays light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, lazily inside functions too."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_cli_commands_and_args_form_no_circle() -> None:
    lowlevel = REPO / "services" / "lowlevel"
    args = imported_modules(lowlevel / "args.py")
    commands = imported_modules(lowlevel / "commands.py")
    assert not {"services.lowlevel.cli", "services.lowlevel.commands"} & args
    assert "services.lowlevel.cli" not in commands
    assert "services.lowlevel.args" in commands


def test_seccomp_schema_lives_in_common_and_the_daemon_imports_no_runtime_module() -> None:
    schema = imported_modules(REPO / "services" / "common" / "oci_seccomp.py")
    assert not any(m.startswith(("services.lowlevel", "ctypes")) for m in schema), schema
    for path in (REPO / "services" / "daemon").rglob("*.py"):
        bad = {m for m in imported_modules(path) if m.startswith("services.lowlevel")}
        assert not bad, f"{path.relative_to(REPO)} imports {bad}"


def test_runtime_launch_imports_nothing_heavy() -> None:
    """What a ``run`` loads, as skiff-lowlevel starts (python -I -S): no os, json, re, enum, typing,
    ctypes (seccomp and capabilities open it only when a config needs it)."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        "import services.lowlevel.cli, services.lowlevel.commands, services.lowlevel.create, "
        "services.lowlevel.lifecycle, services.lowlevel.log, services.common.atomic; "
        "print(' '.join(sorted(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code, str(REPO)], capture_output=True, text=True, timeout=30, check=True
    ).stdout.split()
    heavy = {"os", "json", "re", "enum", "typing", "dataclasses", "argparse", "ctypes", "subprocess", "asyncio"}
    assert not heavy & set(out), heavy & set(out)
