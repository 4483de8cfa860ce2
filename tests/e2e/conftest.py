"""The whole stack per test module's test: three processes under the test's prefix, a busybox image loaded."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.conftest import needs_root
from tests.e2e.stack import Stack, busybox_archive

RUNTIME_SWITCH_ENV = "SKIFF_TEST_RUNTIME"


@pytest.fixture
def stack(prefix: Path) -> Iterator[Stack]:
    needs_root()
    s = Stack(prefix, os.environ.get(RUNTIME_SWITCH_ENV) or "skiff-lowlevel")
    ids: list[str] = []
    try:
        s.start_all()
        yield s
        client = docker.DockerClient(base_url=s.base_url, timeout=30)
        for container in client.containers.list(all=True):
            ids.append(container.id)
            container.remove(force=True)
        assert client.containers.list(all=True) == []
        client.close()
        s.stop_all()
        assert s.leftovers(ids) == []
    finally:
        s.force_cleanup()


@pytest.fixture
def client(stack: Stack, tmp_path: Path) -> Iterator[docker.DockerClient]:
    c = docker.DockerClient(base_url=stack.base_url, timeout=30)
    with open(busybox_archive(tmp_path), "rb") as archive:
        c.images.load(archive.read())
    try:
        yield c
    finally:
        c.close()
