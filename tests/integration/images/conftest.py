"""Fixtures for the image tests: a manager under the private prefix, built images, registries."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.paths import Paths
from services.highlevel.images.manager import ImageManager
from services.highlevel.images.registry import RegistryOptions
from services.highlevel.snapshots import mount as mnt
from services.highlevel.snapshots.snapshotter import Driver, SnapshotKind
from services.highlevel.snapshots.unpack import UnpackLimits
from tests.conftest import needs_root
from tests.support.oci_image import BuiltImage, Layer, build_image, busybox_layer, whiteout_layers

FAST = RegistryOptions(connect_timeout=5.0, read_timeout=5.0, retries=2, backoff=0.05, chunk_size=256 << 10)


def mounts_under(prefix: Path) -> list[str]:
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(str(prefix))]


def cleanup_manager(manager: ImageManager, prefix: Path) -> None:
    """Unmount and remove every active snapshot; a mount still left after that fails the test."""
    for info in manager.snapshots.list():
        if info.kind is SnapshotKind.ACTIVE:
            manager.snapshots.remove(info.key)
    leftover = mounts_under(prefix)
    for target in reversed(leftover):
        with contextlib.suppress(Exception):
            mnt.umount(Path(target), mnt.MNT_DETACH)
    assert leftover == [], f"mounts left behind: {leftover}"


@contextlib.contextmanager
def make_manager(prefix: Path, driver: Driver | None = None, limits: UnpackLimits | None = None,
                 options: RegistryOptions = FAST) -> Iterator[ImageManager]:
    manager = ImageManager(Paths(prefix), registry_options=options, driver=driver, limits=limits)
    try:
        yield manager
    finally:
        cleanup_manager(manager, prefix)


@pytest.fixture
def manager(prefix: Path) -> Iterator[ImageManager]:
    needs_root()
    with make_manager(prefix) as m:
        yield m


@pytest.fixture(scope="session")
def bb_layer(tmp_path_factory: pytest.TempPathFactory) -> Layer:
    return busybox_layer(tmp_path_factory.mktemp("bb"))


@pytest.fixture(scope="session")
def busybox_image(bb_layer: Layer) -> BuiltImage:
    return build_image([bb_layer])


@pytest.fixture(scope="session")
def multi_image(bb_layer: Layer) -> BuiltImage:
    return build_image([bb_layer, *whiteout_layers()], oci=True)
