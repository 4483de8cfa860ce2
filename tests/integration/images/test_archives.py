"""save → load round trip (OCI layout + manifest.json), the older layout, import, and the gRPC surface."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from services.common.errors import InvalidArgument
from services.common.paths import Paths
from services.highlevel.images import archive, commit
from services.highlevel.images.manifest import OCI_INDEX
from tests.conftest import needs_root
from tests.integration.images.conftest import cleanup_manager, make_manager
from tests.support.oci_image import BuiltImage, Entry, Layer, build_image, make_layer, store_image, tar_of_entries


def _members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tf:
        return {m.name: tf.extractfile(m).read() for m in tf.getmembers() if m.isfile()}  # type: ignore[union-attr]


def test_save_load_round_trip(prefix: Path, busybox_image: BuiltImage, multi_image: BuiltImage) -> None:
    needs_root()
    out = prefix / "images.tar"
    with make_manager(prefix / "a") as m:
        store_image(m, "busybox:latest", busybox_image)
        store_image(m, "example.com/multi:2", multi_image)
        asyncio.run(archive.save(m, ["busybox", "example.com/multi:2"], out))
    files = _members(out)
    # The OCI image layout: oci-layout, index.json, blobs named by their own digests.
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads(files["index.json"])
    assert index["schemaVersion"] == 2 and index["mediaType"] == OCI_INDEX
    assert {d["digest"] for d in index["manifests"]} == {busybox_image.manifest_digest, multi_image.manifest_digest}
    names = {d["annotations"]["io.containerd.image.name"] for d in index["manifests"]}
    assert names == {"docker.io/library/busybox:latest", "example.com/multi:2"}
    for name, data in files.items():
        if name.startswith("blobs/sha256/"):
            assert hashlib.sha256(data).hexdigest() == name.rsplit("/", 1)[1]
    # Docker's manifest.json beside it.
    manifest_json = json.loads(files["manifest.json"])
    assert all(set(e) == {"Config", "RepoTags", "Layers"} for e in manifest_json)
    assert {t for e in manifest_json for t in e["RepoTags"]} == {"busybox:latest", "example.com/multi:2"}
    for e in manifest_json:
        assert e["Config"] in files and all(layer in files for layer in e["Layers"])
    assert "busybox" in json.loads(files["repositories"])

    with make_manager(prefix / "b") as m2:
        loaded = asyncio.run(archive.load(m2, out))
        assert sorted(loaded) == ["Loaded image: busybox:latest", "Loaded image: example.com/multi:2"]
        info = m2.inspect("busybox")
        assert info.id == busybox_image.config_digest and info.manifest_digest == busybox_image.manifest_digest
        assert m2.inspect("example.com/multi:2").id == multi_image.config_digest
        rootfs = asyncio.run(m2.prepare("example.com/multi:2", "c"))
        assert (rootfs / "bin" / "busybox").is_file() and not (rootfs / "data" / "gone").exists()
        # Saving again from the loaded copy gives the same blobs (byte-compatible round trip).
        out2 = prefix / "again.tar"
        asyncio.run(archive.save(m2, ["busybox"], out2))
        again = _members(out2)
        assert again[f"blobs/sha256/{busybox_image.manifest_digest[7:]}"] == busybox_image.manifest


def _legacy_archive(path: Path, image: BuiltImage) -> None:
    """The pre-25 ``docker save`` layout: <id>/layer.tar (uncompressed), <config>.json, manifest.json."""
    cfg_name = image.config_digest[7:] + ".json"
    entries = {cfg_name: image.config}
    layers = []
    for i, layer in enumerate(image.layers):
        entries[f"{i:064x}/layer.tar"] = layer.tar
        entries[f"{i:064x}/VERSION"] = b"1.0"
        layers.append(f"{i:064x}/layer.tar")
    entries["manifest.json"] = json.dumps([{"Config": cfg_name, "RepoTags": ["legacy:1"], "Layers": layers}]).encode()
    with tarfile.open(path, "w") as tf:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def test_load_legacy_layout(prefix: Path, multi_image: BuiltImage) -> None:
    needs_root()
    src = prefix / "legacy.tar"
    _legacy_archive(src, multi_image)
    with make_manager(prefix) as m:
        assert asyncio.run(archive.load(m, src)) == ["Loaded image: legacy:1"]
        info = m.inspect("legacy:1")
        assert info.id == multi_image.config_digest
        rootfs = asyncio.run(m.prepare("legacy:1", "c"))
        assert (rootfs / "bin" / "busybox").is_file() and sorted(p.name for p in (rootfs / "opq").iterdir()) == ["new"]


def test_load_with_hostile_layer_leaves_nothing(prefix: Path) -> None:
    needs_root()
    bad = build_image([make_layer(tar_of_entries([Entry("../../../x", data=b"pwned")]), compress=False)])
    src = prefix / "bad.tar"
    _legacy_archive(src, bad)
    with make_manager(prefix / "lib") as m:
        with pytest.raises(InvalidArgument, match="climbs out"):
            asyncio.run(archive.load(m, src))
        assert m.store.list() == [] and m.content.list() == [] and m.snapshots.list() == []
    assert not (prefix / "x").exists()


def test_import_rootfs(prefix: Path, bb_layer: Layer) -> None:
    needs_root()
    src = prefix / "rootfs.tar"
    src.write_bytes(bb_layer.tar)
    with make_manager(prefix / "lib") as m:
        image_id = asyncio.run(commit.import_rootfs(m, src, "imported:1", message="from test",
                                                    config_overrides={"Cmd": ["sh"]}))
        info = m.inspect("imported:1")
        assert info.id == image_id and info.diff_ids == [bb_layer.diff_id]
        assert info.history[0]["comment"] == "from test" and info.config["config"]["Cmd"] == ["sh"]
        rootfs = asyncio.run(m.prepare("imported:1", "c"))
        assert (rootfs / "bin" / "busybox").is_file()


def test_grpc_services(prefix: Path, busybox_image: BuiltImage, bb_layer: Layer) -> None:
    needs_root()
    from grpclib.client import Channel
    from grpclib.exceptions import GRPCError
    from grpclib.server import Server

    from services.common.errors import NotFound
    from services.common.grpc import from_grpc
    from services.gen.skiff.highlevel.v1 import (
        ImagesStub,
        ImportImageRequest,
        InspectImageRequest,
        ListImagesRequest,
        PrepareSnapshotRequest,
        RemoveImageRequest,
        SnapshotKeyRequest,
        SnapshotsStub,
    )
    from services.highlevel.images.manager import ImageManager
    from services.highlevel.images.service import ImagesService
    from services.highlevel.snapshots.service import SnapshotsService

    src = prefix / "rootfs.tar"
    src.write_bytes(bb_layer.tar)
    sock = str(prefix / "hl.sock")

    async def run() -> None:
        manager = ImageManager(Paths(prefix))
        server = Server([ImagesService(manager.paths, manager), SnapshotsService(manager.paths, manager)])
        await server.start(path=sock)
        channel = Channel(path=sock)
        try:
            images, snaps = ImagesStub(channel), SnapshotsStub(channel)
            resp = await images.import_(ImportImageRequest(path=str(src), reference="grpc:1"))
            listed = await images.list(ListImagesRequest())
            assert [i.id for i in listed.images] == [resp.id]
            assert (await images.inspect(InspectImageRequest(reference="grpc:1"))).image.repo_tags == ["grpc:1"]
            prep = await snaps.prepare(PrepareSnapshotRequest(key="c1", image="grpc:1"))
            assert Path(prep.rootfs, "bin", "busybox").is_file() and prep.mount.type in ("overlay", "bind")
            await snaps.remove(SnapshotKeyRequest(key="c1"))
            await images.remove(RemoveImageRequest(reference="grpc:1"))
            with pytest.raises(GRPCError) as err:
                await images.inspect(InspectImageRequest(reference="grpc:1"))
            assert isinstance(from_grpc(err.value), NotFound)
        finally:
            channel.close()
            server.close()
            await server.wait_closed()
            cleanup_manager(manager, prefix)

    asyncio.run(run())
