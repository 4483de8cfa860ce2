"""Fixtures of the tasks tests: a running skiff-highlevel and a bundle factory."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import needs_root
from tests.support.tasks import Bundles, Highlevel, chosen_runtime


@pytest.fixture
def highlevel(prefix: Path) -> Iterator[Highlevel]:
    needs_root()
    hl = Highlevel(prefix, chosen_runtime())
    try:
        hl.start()
        yield hl
    finally:
        hl.teardown()


@pytest.fixture
def bundles(prefix: Path) -> Bundles:
    return Bundles(prefix / "bundles")


@pytest.fixture
def new_id() -> str:
    return f"t{uuid.uuid4().hex[:11]}"
