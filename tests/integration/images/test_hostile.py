"""Hostile registries and layers: each gives a clear error, touches nothing outside, leaves nothing."""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import json
import tarfile
import time
from pathlib import Path

import pytest

from services.common.errors import InvalidArgument, Unavailable
from services.highlevel.content.store import DigestMismatch
from services.highlevel.images import transfer
from services.highlevel.images.manager import ImageManager
from services.highlevel.images.manifest import DOCKER_LIST, host_platform
from services.highlevel.images.progress import ProgressEvent, ProgressStatus
from services.highlevel.snapshots.unpack import UnpackLimits, UnsafeLayer
from tests.conftest import needs_root
from tests.integration.images.conftest import FAST, make_manager
from tests.support.oci_image import BuiltImage, Entry, build_image, make_layer, sha, tar_of_entries
from tests.support.registry import FakeBehaviour, FakeRegistry, fake_registry, hanging_server


def serve(reg: FakeRegistry, image: BuiltImage, tag: str = "v1", blobs: dict[str, bytes] | None = None) -> str:
    reg.manifests[tag] = (image.manifest, image.manifest_type)
    reg.manifests[image.manifest_digest] = (image.manifest, image.manifest_type)
    reg.blobs[image.config_digest] = image.config
    for layer in image.layers:
        reg.blobs[layer.digest] = layer.blob
    reg.blobs.update(blobs or {})
    return f"{reg.host}/test/img:{tag}"


def assert_clean(m: ImageManager, canary: Path | None = None) -> None:
    assert m.store.list() == []
    assert m.content.list() == []
    assert list(m.content.ingest_dir.iterdir()) == []
    assert m.snapshots.list() == []
    assert [p.name for p in m.snapshots.base.iterdir() if p.name.startswith("tmp-")] == []
    if canary is not None:
        assert canary.read_text() == "canary\n"
        assert sorted(p.name for p in canary.parent.iterdir()) == ["shadow"]


@pytest.fixture
def canary(prefix: Path) -> Path:
    # The layers below aim at <prefix>/etc/shadow (../.. from the lib folder and absolute paths).
    etc = prefix / "etc"
    etc.mkdir()
    (etc / "shadow").write_text("canary\n")
    return etc / "shadow"


async def _pull(m: ImageManager, image: BuiltImage, beh: FakeBehaviour | None = None, **kw: object) -> object:
    async with fake_registry(beh) as reg:
        return await transfer.pull(m, serve(reg, image, **kw), options=dataclasses.replace(FAST, plain_http=True))  # type: ignore[arg-type]


def test_manifest_whose_digest_lies(prefix: Path, busybox_image: BuiltImage) -> None:
    needs_root()
    with make_manager(prefix) as m:
        with pytest.raises(DigestMismatch, match="claims"):
            asyncio.run(_pull(m, busybox_image, FakeBehaviour(lie_manifest_digest=True)))
        assert_clean(m)


def test_pull_by_digest_gets_other_content(prefix: Path, busybox_image: BuiltImage) -> None:
    needs_root()
    other = build_image(busybox_image.layers, cmd=["other"])

    async def run() -> None:
        async with fake_registry() as reg:
            serve(reg, busybox_image)
            # The registry answers the digest of one manifest with the bytes of another.
            reg.manifests[busybox_image.manifest_digest] = (other.manifest, other.manifest_type)
            await transfer.pull(m, f"{reg.host}/test/img@{busybox_image.manifest_digest}",
                         options=dataclasses.replace(FAST, plain_http=True))

    with make_manager(prefix) as m:
        with pytest.raises(DigestMismatch, match="asked for"):
            asyncio.run(run())
        assert_clean(m)


def test_layer_whose_bytes_lie(prefix: Path, busybox_image: BuiltImage) -> None:
    needs_root()
    bad = dict.fromkeys([busybox_image.layers[0].digest], gzip.compress(b"not the layer"))
    with make_manager(prefix) as m:
        with pytest.raises(DigestMismatch):
            asyncio.run(_pull(m, busybox_image, blobs=bad))
        assert_clean(m)


def test_truncated_blob(prefix: Path, busybox_image: BuiltImage) -> None:
    needs_root()
    with make_manager(prefix) as m:
        with pytest.raises(DigestMismatch, match="size"):
            asyncio.run(_pull(m, busybox_image, FakeBehaviour(truncate_blob=True)))
        assert_clean(m)


def test_dropped_connection_resumes_with_range(prefix: Path, busybox_image: BuiltImage) -> None:
    needs_root()
    beh = FakeBehaviour(drop_after=100_000, drop_times=1)
    events: list[ProgressEvent] = []

    async def run() -> None:
        async with fake_registry(beh) as reg:
            await transfer.pull(m, serve(reg, busybox_image), progress=events.append,
                         options=dataclasses.replace(FAST, plain_http=True))

    with make_manager(prefix) as m:
        asyncio.run(run())
        assert any("range=bytes=" in r for r in beh.requests), beh.requests
        assert ProgressStatus.RETRYING in {e.status for e in events}
        assert len(m.store.list()) == 1


def test_connection_keeps_dropping(prefix: Path, busybox_image: BuiltImage) -> None:
    needs_root()
    beh = FakeBehaviour(drop_after=50_000, drop_times=100)
    with make_manager(prefix) as m:
        with pytest.raises(Unavailable, match="gave up after 3 attempts"):
            asyncio.run(_pull(m, busybox_image, beh))
        assert_clean(m)


def test_registry_that_hangs_times_out(prefix: Path) -> None:
    needs_root()

    async def run() -> None:
        async with hanging_server() as host:
            opts = dataclasses.replace(FAST, plain_http=True, read_timeout=0.3, connect_timeout=0.3, retries=1)
            await transfer.pull(m, f"{host}/test/img:v1", options=opts)

    with make_manager(prefix) as m:
        start = time.monotonic()
        with pytest.raises(Unavailable, match="timed out"):
            asyncio.run(run())
        assert time.monotonic() - start < 5
        assert_clean(m)


def _bomb_layer() -> bytes:
    info = tarfile.TarInfo("zeros")
    info.size = 64 << 20
    return info.tobuf(format=tarfile.PAX_FORMAT) + bytes(info.size) + bytes(1024)


HOSTILE = {
    "dotdot": (tar_of_entries([Entry("../../etc/x", data=b"pwned")]), "climbs out"),
    "hardlink-shadow": (tar_of_entries([Entry("stolen", tarfile.LNKTYPE, linkname="/etc/shadow")]),
                        "not in this archive"),
    "hardlink-dotdot": (tar_of_entries([Entry("s", tarfile.LNKTYPE, linkname="../../../../etc/shadow")]),
                        "climbs out"),
    "gzip-bomb": (_bomb_layer(), "bomb"),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_layer_pull(prefix: Path, canary: Path, kind: str) -> None:
    needs_root()
    tar, message = HOSTILE[kind]
    image = build_image([make_layer(tar)])
    limits = UnpackLimits(ratio_floor=4 << 20, max_ratio=50)
    with make_manager(prefix, limits=limits) as m:
        with pytest.raises(UnsafeLayer, match=message):
            asyncio.run(_pull(m, image))
        assert_clean(m, canary)


def test_absolute_symlink_write_through_is_clamped(prefix: Path, canary: Path) -> None:
    needs_root()
    tar = tar_of_entries([
        Entry("evil", tarfile.SYMTYPE, linkname=str(canary.parent)),
        Entry("evil/shadow", data=b"pwned"),
        Entry("evil/x", data=b"pwned"),
    ])
    image = build_image([make_layer(tar)])
    with make_manager(prefix) as m:
        asyncio.run(_pull(m, image))
        rootfs = asyncio.run(m.prepare(f"{image.config_digest}", "c"))
        assert canary.read_text() == "canary\n"
        assert sorted(p.name for p in canary.parent.iterdir()) == ["shadow"]
        inside = rootfs / str(canary.parent).lstrip("/")
        assert (inside / "x").read_bytes() == b"pwned"


def test_manifest_list_resolves_to_this_platform(prefix: Path, busybox_image: BuiltImage) -> None:
    needs_root()
    os_name, arch = host_platform()
    index = json.dumps({
        "schemaVersion": 2, "mediaType": DOCKER_LIST,
        "manifests": [
            {"mediaType": busybox_image.manifest_type, "digest": "sha256:" + "1" * 64, "size": 10,
             "platform": {"os": "linux", "architecture": "arm64"}},
            {"mediaType": busybox_image.manifest_type, "digest": busybox_image.manifest_digest,
             "size": len(busybox_image.manifest), "platform": {"os": os_name, "architecture": arch}},
        ],
    }).encode()

    async def run() -> object:
        async with fake_registry() as reg:
            serve(reg, busybox_image)
            reg.manifests["multi"] = (index, DOCKER_LIST)
            return await transfer.pull(m, f"{reg.host}/test/img:multi",
                                       options=dataclasses.replace(FAST, plain_http=True))

    with make_manager(prefix) as m:
        info = asyncio.run(run())
        assert info.manifest_digest == busybox_image.manifest_digest  # type: ignore[attr-defined]
        assert m.store.list()[0].index_digest == sha(index)


def test_bad_reference_is_invalid(prefix: Path) -> None:
    needs_root()
    with make_manager(prefix) as m, pytest.raises(InvalidArgument):
        asyncio.run(transfer.pull(m, "Not A Reference"))


def test_gc_during_pull_spares_leased_blobs(prefix: Path, multi_image: BuiltImage) -> None:
    needs_root()
    collected: list[list[str]] = []

    def on_progress(ev: ProgressEvent) -> None:
        # GC right in the middle of the pull: after a layer is stored, before the image exists.
        if ev.status is ProgressStatus.PULL_COMPLETE and not collected:
            blobs, chains = m.referenced()
            collected.append(m.content.gc(blobs) + m.snapshots.gc(chains | m.content.leased()))

    async def run() -> None:
        async with fake_registry() as reg:
            await transfer.pull(m, serve(reg, multi_image), progress=on_progress,
                         options=dataclasses.replace(FAST, plain_http=True))

    with make_manager(prefix) as m:
        asyncio.run(run())
        assert collected == [[]]
        info = m.inspect(multi_image.config_digest)
        assert len(info.layers) == 3
        rootfs = asyncio.run(m.prepare(info.id, "c"))
        assert (rootfs / "opq" / "new").exists()


def test_bearer_token_auth(prefix: Path, busybox_image: BuiltImage) -> None:
    needs_root()
    from services.highlevel.images.registry import AuthError, Credentials

    beh = FakeBehaviour(bearer=True)

    async def run(creds: dict[str, Credentials] | None) -> object:
        async with fake_registry(beh) as reg:
            name = serve(reg, busybox_image)
            host = name.split("/", 1)[0]
            return await transfer.pull(m, name, credentials={host: creds[""]} if creds else None,
                                options=dataclasses.replace(FAST, plain_http=True))

    with make_manager(prefix) as m:
        with pytest.raises(AuthError, match="refused"):
            asyncio.run(run({"": Credentials("skiff", "wrong")}))
        assert_clean(m)
        info = asyncio.run(run({"": Credentials("skiff", "s3cret")}))
        assert info.id == busybox_image.config_digest  # type: ignore[attr-defined]
        assert "GET token scope=repository:test/img:pull" in beh.requests
