"""Fixtures shared by every test layer: a private root prefix per test and the runtime switch."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.config import resolve_runtime

RUNTIME_SWITCH_ENV = "SKIFF_TEST_RUNTIME"


def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: real namespaces, cgroups and mounts")


@pytest.fixture
def prefix() -> Iterator[Path]:
    """A root prefix of its own (``/tmp/skiff-test-XXXX``): two runs never share state."""
    path = Path(tempfile.mkdtemp(prefix="skiff-test-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def unique_id() -> str:
    return f"skiff-t-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def runtime_argv() -> list[str]:
    """``skiff-lowlevel`` unless ``SKIFF_TEST_RUNTIME`` names another (runc, crun or a path)."""
    return resolve_runtime(os.environ.get(RUNTIME_SWITCH_ENV) or "skiff-lowlevel")
