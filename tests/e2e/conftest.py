"""The whole stack per test module's test: three processes under the test's prefix, a busybox image loaded."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.conftest import needs_root
from tests.e2e.stack import Stack, busybox_archive

RUNTIME_SWITCH_ENV = "SKIFF_TEST_RUNTIME"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    if report.when == "call":
        item.stash[CALL_FAILED] = report.failed
    return report


CALL_FAILED = pytest.StashKey[bool]()
LOG_TAIL = 40


@pytest.fixture
def stack(prefix: Path, request: pytest.FixtureRequest) -> Iterator[Stack]:
    needs_root()
    s = Stack(prefix, os.environ.get(RUNTIME_SWITCH_ENV) or "skiff-lowlevel")
    ids: list[str] = []
    try:
        s.start_all()
        yield s
        if request.node.stash.get(CALL_FAILED, False):
            # The services' own account of a failure, in the report (their logs go with the prefix).
            for module, log in s.logs.items():
                lines = log.read_text(errors="replace").splitlines()[-LOG_TAIL:] if log.exists() else []
                print(f"---- {module}: last {len(lines)} lines of {log.name}", *lines, sep="\n")
        client = docker.DockerClient(base_url=s.base_url, timeout=30)
        # The low-level list and remove: an --rm container may go by itself meanwhile.
        for entry in client.api.containers(all=True):
            ids.append(entry["Id"])
            with contextlib.suppress(docker.errors.NotFound):
                client.api.remove_container(entry["Id"], force=True)
        assert client.api.containers(all=True) == []
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
