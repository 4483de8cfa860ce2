"""docker-py over the images endpoints: pull progress messages, push with auth_config, import, errors."""

from __future__ import annotations

import io
import secrets
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.support.registry import REGISTRY_BIN, RunningRegistry, run_registry


@pytest.fixture
def auth_registry(tmp_path: Path) -> Iterator[RunningRegistry]:
    if not REGISTRY_BIN.exists():
        pytest.skip("docker-registry not installed")
    with run_registry(tmp_path / "registry", auth=True) as reg:
        yield reg


def unique_rootfs() -> bytes:
    """A one-file root filesystem whose layer no other test has: the pull must download it (3 MiB: several
    Downloading messages)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        data = secrets.token_bytes(3 << 20)  # above highlevel's 512 KiB progress step
        info = tarfile.TarInfo("random.bin")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_py_push_pull_progress(client: docker.DockerClient, auth_registry: RunningRegistry) -> None:
    server = f"{auth_registry.host}:{auth_registry.port}"
    auth = {"username": "skiff", "password": "s3cret", "serveraddress": server}
    repo = f"{server}/py/unique"
    image_id = client.api.import_image_from_data(unique_rootfs(), repository=repo, tag="v1")
    assert '"status"' in image_id
    pushed: list[dict[str, Any]] = list(client.api.push(repo, tag="v1", auth_config=auth, stream=True, decode=True))
    assert not [m for m in pushed if "error" in m], pushed
    assert any(m.get("aux", {}).get("Digest", "").startswith("sha256:") for m in pushed), pushed
    client.images.remove(f"{repo}:v1")
    client.api.prune_images()

    messages: list[dict[str, Any]] = list(client.api.pull(repo, tag="v1", auth_config=auth, stream=True, decode=True))
    assert not [m for m in messages if "error" in m], messages
    assert messages[0]["status"] == f"Pulling from {repo.split('/', 1)[1]}" or "Pulling from" in messages[0]["status"]
    layer_lines = [m for m in messages if m.get("id") and m.get("id") != "v1"]
    assert layer_lines and all("progressDetail" in m for m in layer_lines)
    downloading = [m for m in layer_lines if m["status"] == "Downloading"]
    assert downloading and all(m["progressDetail"]["total"] > 0 and "progress" in m for m in downloading)
    assert any(m["status"] == "Pull complete" for m in layer_lines)
    assert any(m["status"].startswith("Digest: sha256:") for m in messages)
    image = client.images.get(f"{repo}:v1")
    assert image.tags == [f"{repo}:v1"]
    # The high-level call returns the image, as against dockerd.
    assert client.images.pull(repo, tag="v1", auth_config=auth).id == image.id


def test_py_pull_errors(client: docker.DockerClient, auth_registry: RunningRegistry) -> None:
    server = f"{auth_registry.host}:{auth_registry.port}"
    with pytest.raises(docker.errors.APIError) as denied:
        client.api.pull(f"{server}/py/none", tag="v1")
    assert denied.value.status_code in (401, 403, 404, 409), denied.value
    auth = {"username": "skiff", "password": "s3cret", "serveraddress": server}
    with pytest.raises(docker.errors.NotFound):
        client.api.pull(f"{server}/py/none", tag="v1", auth_config=auth)
    with pytest.raises(docker.errors.ImageNotFound):
        client.images.get("never-pulled:v9")


def test_create_follows_the_image_a_name_points_to(client: docker.DockerClient) -> None:
    # The daemon keeps what a name resolved to between creates: a tag, a commit or a removal must
    # show in the very next create.
    first = client.containers.create("busybox", ["true"])
    old_id = first.attrs["Image"]
    client.images.get("busybox").tag("keep-old", "1")
    first.commit("busybox", "latest", changes=['LABEL moved="yes"'])
    second = client.containers.create("busybox", ["true"])
    assert second.attrs["Image"] not in (old_id, "") and second.attrs["Config"]["Labels"] == {"moved": "yes"}
    client.images.get("keep-old:1").tag("busybox", "latest")
    third = client.containers.create("busybox", ["true"])
    assert third.attrs["Image"] == old_id
    for c in (first, second, third):
        c.remove()
    client.images.remove("busybox:latest", force=True)
    with pytest.raises(docker.errors.ImageNotFound):
        client.containers.create("busybox", ["true"])
