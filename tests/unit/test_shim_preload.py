"""The zygote's preload list (services/lowlevel/preload.py) names modules that exist."""

from __future__ import annotations

import importlib

from services.lowlevel.preload import PRELOAD


def test_every_preloaded_lowlevel_module_imports() -> None:
    assert PRELOAD and len(set(PRELOAD)) == len(PRELOAD)
    for name in PRELOAD:
        importlib.import_module(f"services.lowlevel.{name}")
