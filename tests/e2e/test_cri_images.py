"""CRI's ImageService (``runtime.v1``) of skiff-cri over gRPC, beside the Docker API of the same stack:
one content store, so an image pulled through CRI is Docker's too and the other way round. Pulls go
to a real loopback ``docker-registry`` (with basic auth for the AuthConfig cases); images are the
busybox-static stand-in, pushed with the docker API."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import betterproto
import docker
import pytest
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from services.gen.runtime.v1 import (
    AuthConfig,
    Image,
    ImageFilter,
    ImageFsInfoRequest,
    ImageServiceStub,
    ImageSpec,
    ImageStatusRequest,
    ImageStatusResponse,
    ListImagesRequest,
    PullImageRequest,
    RemoveImageRequest,
)
from tests.e2e.cri_stack import CriStack
from tests.e2e.stack import Stack
from tests.support.registry import RunningRegistry, run_registry

T = TypeVar("T")


@pytest.fixture
def cri(stack: Stack, tmp_path: Path) -> Iterator[Path]:
    """skiff-cri beside the stack (tests/e2e/cri_stack.py); its socket."""
    s = CriStack(stack, tmp_path / "cri")
    try:
        s.start()
        yield s.socket
        s.stop()
    finally:
        s.stop(9)
        s.remove_bridge()


def call(socket_path: Path, fn: Callable[[ImageServiceStub], Awaitable[T]]) -> T:
    """One gRPC call to skiff-cri's ImageService on a channel of its own."""
    async def run() -> T:
        channel = Channel(path=str(socket_path))
        try:
            return await asyncio.wait_for(fn(ImageServiceStub(channel)), 120)
        finally:
            channel.close()

    return asyncio.run(run())


def status(socket_path: Path, reference: str, verbose: bool = False) -> ImageStatusResponse:
    return call(socket_path, lambda s: s.image_status(ImageStatusRequest(ImageSpec(image=reference), verbose)))


def pull(socket_path: Path, reference: str, auth: AuthConfig | None = None) -> str:
    request = PullImageRequest(image=ImageSpec(image=reference), auth=auth or AuthConfig())
    return call(socket_path, lambda s: s.pull_image(request)).image_ref


def remove(socket_path: Path, reference: str) -> None:
    call(socket_path, lambda s: s.remove_image(RemoveImageRequest(ImageSpec(image=reference))))


def listed(socket_path: Path, reference: str = "") -> list[Image]:
    request = ListImagesRequest(filter=ImageFilter(image=ImageSpec(image=reference))) if reference \
        else ListImagesRequest()
    return call(socket_path, lambda s: s.list_images(request)).images


def uid_of(image: Image) -> int | None:
    return image.uid.value if betterproto.serialized_on_wire(image.uid) else None


def grpc_status(fn: Callable[[], Any]) -> Status:
    with pytest.raises(GRPCError) as info:
        fn()
    return info.value.status


def push_busybox(client: docker.DockerClient, reg: RunningRegistry, repo: str,
                 auth: dict[str, str] | None = None) -> str:
    """An image of its own (busybox with a label: another config, another id) pushed as ``repo``,
    then removed from the engine; its full name."""
    name = f"{reg.host}:{reg.port}/{repo}"
    repository, tag = name.rsplit(":", 1)
    box = client.containers.create("busybox:latest", ["true"])
    try:
        box.commit(repository, tag, conf={"Labels": {"skiff.test": repo}})
    finally:
        box.remove()
    for line in client.api.push(name, stream=True, decode=True, auth_config=auth):
        assert "error" not in line, line
    client.images.remove(name)
    return name


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[RunningRegistry]:
    with run_registry(tmp_path / "registry") as reg:
        yield reg


def test_pull_status_list_remove(cri: Path, client: docker.DockerClient, registry: RunningRegistry) -> None:
    name = push_busybox(client, registry, "cri/busybox:1")
    assert status(cri, name).image.id == ""  # not there yet: an empty answer, no error

    image_id = pull(cri, name)
    assert image_id.startswith("sha256:")
    found = status(cri, name).image
    assert found.id == image_id
    assert found.repo_tags == [name]
    assert len(found.repo_digests) == 1 and found.repo_digests[0].startswith(f"{name.rsplit(':', 1)[0]}@sha256:")
    assert found.size > 0
    # Every name of the image finds the same image: its id, a short id, its digest.
    assert status(cri, image_id).image == found
    assert status(cri, found.repo_digests[0]).image == found
    assert status(cri, image_id[7:19]).image.id == image_id

    assert image_id in [i.id for i in listed(cri)]
    assert [i.id for i in listed(cri, name)] == [image_id]
    assert listed(cri, "no/such:image") == []

    # The same store as Docker's: the CRI pull is a Docker image.
    assert client.images.get(name).id == image_id

    remove(cri, name)
    assert status(cri, name).image.id == ""
    with pytest.raises(docker.errors.ImageNotFound):
        client.images.get(name)
    remove(cri, name)  # gone already: still a success


def test_docker_image_is_seen_with_its_full_name(cri: Path, client: docker.DockerClient) -> None:
    found = status(cri, "busybox", verbose=True)
    assert found.image.repo_tags == ["docker.io/library/busybox:latest"]
    assert found.image.id == client.images.get("busybox:latest").id
    assert uid_of(found.image) is None and found.image.username == ""
    info = json.loads(found.info["info"])
    assert info["imageSpec"]["config"]["Cmd"] == ["sh"]
    assert info["chainID"].startswith("sha256:")
    assert status(cri, "docker.io/library/busybox:latest").image == found.image
    assert status(cri, "busybox").info == {}  # not verbose: no info


def test_remove_by_id_takes_every_name(cri: Path, client: docker.DockerClient) -> None:
    image = client.images.get("busybox:latest")
    image.tag("skiff-cri-test/one", "a")
    image.tag("skiff-cri-test/two", "b")
    assert sorted(status(cri, "skiff-cri-test/one:a").image.repo_tags) == [
        "docker.io/library/busybox:latest", "docker.io/skiff-cri-test/one:a", "docker.io/skiff-cri-test/two:b"]
    remove(cri, image.id)
    for name in ("busybox:latest", "skiff-cri-test/one:a", "skiff-cri-test/two:b"):
        assert status(cri, name).image.id == ""
    assert client.images.list() == []


@pytest.mark.parametrize(("user", "uid", "username"), [
    ("1002", 1002, ""), ("www-data", None, "www-data"), ("1003:1004", 1003, ""), ("www-data:1004", None, "www-data"),
    ("0", 0, ""),
])
def test_image_user_as_uid_or_username(cri: Path, client: docker.DockerClient, user: str, uid: int | None,
                                       username: str) -> None:
    box = client.containers.create("busybox:latest", ["true"])
    try:
        box.commit("skiff-cri-test/user", "t", conf={"User": user})
    finally:
        box.remove()
    found = status(cri, "skiff-cri-test/user:t").image
    assert uid_of(found) == uid
    assert found.username == username


def test_pull_with_auth_config(cri: Path, client: docker.DockerClient, tmp_path: Path) -> None:
    with run_registry(tmp_path / "auth-registry", auth=True) as reg:
        user, password = next(iter(reg.users.items()))
        name = push_busybox(client, reg, "cri/private:1", auth={"username": user, "password": password})
        assert grpc_status(lambda: pull(cri, name)) in (Status.UNAUTHENTICATED, Status.FAILED_PRECONDITION)
        assert status(cri, name).image.id == ""  # nothing half-made

        assert pull(cri, name, AuthConfig(username=user, password=password)).startswith("sha256:")
        remove(cri, name)

        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        assert pull(cri, name, AuthConfig(auth=token)).startswith("sha256:")
        remove(cri, name)

        bad = grpc_status(lambda: pull(cri, name, AuthConfig(username=user, password="wrong")))
        assert bad in (Status.UNAUTHENTICATED, Status.FAILED_PRECONDITION)
        assert grpc_status(lambda: pull(cri, name, AuthConfig(auth="not base64!"))) == Status.INVALID_ARGUMENT


def test_pull_refusals(cri: Path, registry: RunningRegistry) -> None:
    assert grpc_status(lambda: pull(cri, "")) == Status.INVALID_ARGUMENT
    assert grpc_status(lambda: pull(cri, f"{registry.host}:{registry.port}/no/such:image")) == Status.NOT_FOUND
    assert grpc_status(lambda: status(cri, "")) == Status.INVALID_ARGUMENT


def test_image_fs_info(cri: Path, stack: Stack) -> None:
    usage = call(cri, lambda s: s.image_fs_info(ImageFsInfoRequest())).image_filesystems
    assert len(usage) == 1
    assert usage[0].fs_id.mountpoint == str(stack.paths.highlevel_lib / "snapshots")
    assert usage[0].timestamp > 0
    # busybox is unpacked once a container is made of it; before, the folder may be nearly empty
    assert betterproto.serialized_on_wire(usage[0].used_bytes)
    assert betterproto.serialized_on_wire(usage[0].inodes_used)
