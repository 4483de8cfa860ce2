"""resolve_runtime: skiff-lowlevel's argv is worked out once per interpreter choice, each caller gets its own list."""

from __future__ import annotations

import pytest

from services.common.config import resolve_runtime


def test_default_runtime_argv_is_stable_and_a_fresh_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SKIFF_LOWLEVEL_PYTHON", raising=False)
    first = resolve_runtime("skiff-lowlevel")
    assert first[1:3] == ["-I", "-S"] and first[3].endswith("services/lowlevel/__main__.py")
    first.append("--mutated")
    assert resolve_runtime("skiff-lowlevel") == first[:-1]


def test_interpreter_choice_is_read_at_each_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKIFF_LOWLEVEL_PYTHON", "/opt/other/python3")
    assert resolve_runtime("skiff-lowlevel")[0] == "/opt/other/python3"
    monkeypatch.delenv("SKIFF_LOWLEVEL_PYTHON")
    assert resolve_runtime("skiff-lowlevel")[0] != "/opt/other/python3"
