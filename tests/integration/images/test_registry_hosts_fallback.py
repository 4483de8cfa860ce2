"""The registry client over a hosts.toml's hosts (services/common/registry_hosts.py), against two in-process
registries on 127.0.0.1: the hosts are asked in the file's order, a host that fails a request hands it to
the next, the one that answered is asked first from then on, a host without ``resolve`` never sees a tag,
and when every host fails the error names each of them."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from services.common.errors import NotFound
from services.highlevel.images import transfer
from services.highlevel.images.manager import ImageManager
from tests.conftest import needs_root
from tests.integration.images.conftest import FAST, make_manager
from tests.support.oci_image import BuiltImage
from tests.support.registry import FakeRegistry, fake_registry

NAMESPACE = "registry.invalid"  # never resolved: every request must go to the hosts below


def serve(reg: FakeRegistry, image: BuiltImage, *, blobs: bool = True) -> None:
    reg.manifests["v1"] = (image.manifest, image.manifest_type)
    reg.manifests[image.manifest_digest] = (image.manifest, image.manifest_type)
    if blobs:
        reg.blobs[image.config_digest] = image.config
        for layer in image.layers:
            reg.blobs[layer.digest] = layer.blob


def write_hosts(certs_d: Path, *hosts: tuple[str, list[str]]) -> None:
    folder = certs_d / NAMESPACE
    folder.mkdir(parents=True, exist_ok=True)
    body = "capabilities = []\n" + "".join(
        f'[host."http://{host}"]\n  capabilities = {caps!r}\n'.replace("'", '"') for host, caps in hosts)
    (folder / "hosts.toml").write_text(body)


def blob_requests(reg: FakeRegistry) -> list[str]:
    return [r for r in reg.behaviour.requests if r.startswith("GET blob")]


@pytest.mark.parametrize("first_has_blobs", [False, True], ids=["blobs-from-second", "all-from-first"])
def test_hosts_in_order_with_fallback(prefix: Path, multi_image: BuiltImage, first_has_blobs: bool) -> None:
    needs_root()
    certs_d = prefix / "certs.d"
    options = dataclasses.replace(FAST, certs_d=certs_d)

    async def run(m: ImageManager) -> None:
        async with fake_registry() as first, fake_registry() as second:
            serve(first, multi_image, blobs=first_has_blobs)
            serve(second, multi_image)
            write_hosts(certs_d, (first.host, ["pull", "resolve"]), (second.host, ["pull", "resolve"]))
            info = await transfer.pull(m, f"{NAMESPACE}/test/img:v1")
            assert info.repo_tags == [f"{NAMESPACE}/test/img:v1"]
            assert info.manifest_digest == multi_image.manifest_digest
            assert "GET manifest v1" in first.behaviour.requests
            assert "GET manifest v1" not in second.behaviour.requests
            blobs = 1 + len(multi_image.layers)
            if first_has_blobs:
                assert len(blob_requests(first)) == blobs and blob_requests(second) == []
            else:
                # The first blob failed over to the second host, which is asked first from then on.
                assert len(blob_requests(first)) == 1 and len(blob_requests(second)) == blobs

    with make_manager(prefix, options=options) as m:
        asyncio.run(run(m))


def test_pull_only_host_never_resolves_a_tag(prefix: Path, busybox_image: BuiltImage) -> None:
    needs_root()
    certs_d = prefix / "certs.d"
    options = dataclasses.replace(FAST, certs_d=certs_d)

    async def run(m: ImageManager) -> None:
        async with fake_registry() as puller, fake_registry() as resolver:
            serve(puller, busybox_image)
            serve(resolver, busybox_image, blobs=False)
            write_hosts(certs_d, (puller.host, ["pull"]), (resolver.host, ["resolve"]))
            await transfer.pull(m, f"{NAMESPACE}/test/img:v1")
            assert [r for r in puller.behaviour.requests if r.startswith("GET manifest")] == []
            assert resolver.behaviour.requests[0] == "GET manifest v1"
            assert blob_requests(resolver) == [] and len(blob_requests(puller)) == 2

    with make_manager(prefix, options=options) as m:
        asyncio.run(run(m))


def test_every_host_failing_names_them_all(prefix: Path, busybox_image: BuiltImage) -> None:
    needs_root()
    certs_d = prefix / "certs.d"
    options = dataclasses.replace(FAST, certs_d=certs_d)

    async def run(m: ImageManager) -> None:
        async with fake_registry() as first, fake_registry() as second:
            write_hosts(certs_d, (first.host, ["pull", "resolve"]), (second.host, ["pull", "resolve"]))
            with pytest.raises(NotFound) as failed:
                await transfer.pull(m, f"{NAMESPACE}/test/img:v1")
            message = failed.value.message
            assert message.startswith(f"GET http://{second.host}/v2/test/img/manifests/v1: HTTP 404")
            assert f"tried first: http://{first.host}: GET http://{first.host}/v2/test/img/manifests/v1" in message
        assert m.store.list() == [] and m.content.list() == []

    with make_manager(prefix, options=options) as m:
        asyncio.run(run(m))
