"""Image routes as dockerd 20.10 answers them (issue 11): docker load's streamed reply and errors,
docker commit's Parent, Config, history and empty commits, docker diff without the engine's files.

Each checks what docker-py and the docker CLI see, and the wire where a client's reading depends on it
(a load reply that is not chunked is read by docker-py as one JSON document)."""

from __future__ import annotations

import http.client
import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
from typing import Any
from urllib.parse import urlencode

import docker
import pytest

from tests.e2e.stack import Stack

CLI = shutil.which("docker")
needs_cli = pytest.mark.skipif(CLI is None, reason="docker CLI not installed")
ENGINE_FILES = {"/etc/hosts", "/etc/hostname", "/etc/resolv.conf"}


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=60)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(60)
        self.sock.connect(self.path)


def _request(stack: Stack, method: str, url: str, body: bytes | None = None) -> tuple[http.client.HTTPResponse, bytes]:
    conn = _UnixHTTPConnection(str(stack.paths.api_socket))
    try:
        conn.request(method, url, body=body, headers={"Content-Type": "application/x-tar"} if body else {})
        resp = conn.getresponse()
        return resp, resp.read()
    finally:
        conn.close()


def _post(stack: Stack, url: str, body: bytes) -> tuple[http.client.HTTPResponse, bytes]:
    return _request(stack, "POST", url, body)


def _lines(body: bytes) -> list[dict[str, Any]]:
    return [json.loads(x) for x in body.split(b"\r\n") if x.strip()]


def _cli(stack: Stack, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ, DOCKER_HOST=stack.base_url, DOCKER_CONFIG=str(stack.prefix / "docker-config"))
    return subprocess.run([CLI or "docker", *args], capture_output=True, timeout=60, env=env, input=stdin)


def _saved(stack: Stack, *names: str) -> bytes:
    """docker save of several names in one archive (GET /images/get?names=...)."""
    resp, body = _request(stack, "GET", "/v1.41/images/get?" + urlencode([("names", n) for n in names]))
    assert resp.status == 200, body
    return body


# -- docker load ----------------------------------------------------------------------------------

@pytest.mark.parametrize("quiet", [None, "1", "0"], ids=["default", "quiet", "not-quiet"])
def test_load_of_bad_data_is_a_streamed_error(stack: Stack, client: docker.DockerClient, quiet: str | None) -> None:
    # dockerd answers 200 once the body is read, the failure as a JSON message, in both modes.
    resp, body = _post(stack, "/v1.41/images/load" + (f"?quiet={quiet}" if quiet else ""), b"abc")
    assert resp.status == 200 and resp.getheader("Content-Type") == "application/json"
    assert resp.chunked, resp.getheaders()
    messages = _lines(body)
    assert len(messages) == 1, messages
    error = messages[0]
    assert error["error"] and error["errorDetail"] == {"message": error["error"]}, error
    assert "/" not in error["error"], "no server-side path in the message"
    # docker-py's reading of it: ImageLoadError from the model, the message from the API.
    with pytest.raises(docker.errors.ImageLoadError):
        client.images.load(b"abc")
    assert [m.get("error") for m in client.api.load_image(b"abc", quiet=quiet == "1")] == [error["error"]]
    # Nothing half-made: the images are as they were.
    assert [i.tags for i in client.images.list()] == [["busybox:latest"]]


@needs_cli
def test_cli_load_of_bad_data_fails(stack: Stack, client: docker.DockerClient) -> None:
    result = _cli(stack, "load", stdin=b"not a tar archive at all" * 100)
    assert result.returncode != 0 and b"tar" in result.stderr, result
    assert result.stdout == b""


def test_load_reply_is_chunked_one_message_a_line(stack: Stack, client: docker.DockerClient) -> None:
    client.images.get("busybox").tag("second", "v1")
    archive = _saved(stack, "busybox:latest", "second:v1")
    resp, body = _post(stack, "/v1.41/images/load?quiet=1", archive)
    assert resp.status == 200 and resp.chunked and resp.getheader("Content-Type") == "application/json"
    assert sorted(_lines(body), key=str) == [{"stream": "Loaded image: busybox:latest\n"},
                                             {"stream": "Loaded image: second:v1\n"}]
    # docker-py decodes several messages (it read "Extra data" from one unchunked body).
    loaded = client.images.load(archive)
    assert {t for image in loaded for t in image.tags} == {"busybox:latest", "second:v1"}
    assert len({image.id for image in loaded}) == 1


def test_load_moving_a_name_says_so(stack: Stack, client: docker.DockerClient) -> None:
    busybox = client.images.get("busybox")
    archive = _saved(stack, "busybox:latest")
    # busybox:latest now names another image; loading the archive moves the name back, as dockerd says.
    other = client.containers.run("busybox", ["touch", "/moved"], detach=True)
    other.wait()
    moved = other.commit("busybox", "latest")
    other.remove()
    messages = list(client.api.load_image(archive))
    assert messages == [
        {"stream": f"The image busybox:latest already exists, renaming the old one with ID {moved.id} "
                   "to empty string\n"},
        {"stream": "Loaded image: busybox:latest\n"},
    ], messages
    assert client.images.get("busybox:latest").id == busybox.id
    assert client.images.get(moved.id).tags == []


# -- docker commit --------------------------------------------------------------------------------

def test_commit_records_its_parent(client: docker.DockerClient) -> None:
    busybox = client.images.get("busybox")
    box = client.containers.run("busybox", ["touch", "/test"], detach=True)
    box.wait()
    res = client.api.commit(box.id, message="first commit", author="skiff")
    image = client.api.inspect_image(res["Id"])
    assert image["Parent"] == busybox.id
    assert image["Comment"] == "first commit" and image["Author"] == "skiff"
    # API 1.41's VirtualSize, in inspect and the list, equal to Size as dockerd 20.10 reports it.
    assert image["VirtualSize"] == image["Size"] > 0
    assert all(i["VirtualSize"] == i["Size"] for i in client.api.images())
    # docker history: the image's own row, then its parent's (with the parent's tags), then <missing>.
    rows = client.api.history(res["Id"])
    assert rows[0]["Id"] == res["Id"] and rows[0]["Tags"] is None and rows[0]["Comment"] == "first commit"
    assert rows[0]["CreatedBy"] == "touch /test"  # the container's command, as dockerd writes it
    assert rows[1]["Id"] == busybox.id and rows[1]["Tags"] == ["busybox:latest"]
    assert all(r["Id"] == "<missing>" for r in rows[2:])
    # A commit of the commit: a chain of parents, each row its image's id.
    child = client.containers.run(res["Id"], ["touch", "/again"], detach=True)
    child.wait()
    again = child.commit("chain", "2")
    assert again.attrs["Parent"] == res["Id"]
    assert [r["Id"] for r in again.history()[:3]] == [again.id, res["Id"], busybox.id]
    # Images the engine pulled or loaded have none.
    assert busybox.attrs["Parent"] == ""


@needs_cli
def test_cli_commit_parent_and_history(stack: Stack, client: docker.DockerClient) -> None:
    busybox = client.images.get("busybox")
    assert _cli(stack, "run", "--name", "c1", "busybox", "touch", "/test").returncode == 0
    result = _cli(stack, "commit", "-m", "from the cli", "c1", "committed:cli")
    assert result.returncode == 0, result.stderr
    parent = _cli(stack, "image", "inspect", "-f", "{{.Parent}}", "committed:cli")
    assert parent.stdout.decode().strip() == busybox.id
    history = _cli(stack, "history", "--no-trunc", "--format", "{{.ID}}|{{.Comment}}", "committed:cli")
    rows = history.stdout.decode().splitlines()
    image_id = client.images.get("committed:cli").id
    assert rows[0] == f"{image_id}|from the cli" and rows[1].startswith(f"{busybox.id}|"), rows


def test_commit_takes_the_containers_config(client: docker.DockerClient) -> None:
    box = client.containers.create("busybox", ["sleep", "1"], environment={"FOO": "bar"}, working_dir="/tmp",
                                   labels={"from": "container"}, user="0:0")
    image = client.images.get(box.commit().id)
    config = image.attrs["Config"]
    # dockerd: the container's Config, not only the image's.
    assert "FOO=bar" in config["Env"] and config["Cmd"] == ["sleep", "1"] and config["WorkingDir"] == "/tmp"
    assert config["Labels"] == {"from": "container"} and config["User"] == "0:0"
    # The client's config and --change go over it, Env and Labels merged key by key.
    res = client.api.commit(box.id, conf={"Env": ["BAR=baz"], "Labels": {"extra": "1"}},
                            changes=["ENTRYPOINT [\"/bin/echo\"]", "EXPOSE 8000"])
    config = client.api.inspect_image(res["Id"])["Config"]
    assert "FOO=bar" in config["Env"] and "BAR=baz" in config["Env"]
    assert config["Labels"] == {"from": "container", "extra": "1"}
    assert config["Entrypoint"] == ["/bin/echo"] and config["Cmd"] is None
    assert "8000/tcp" in config["ExposedPorts"]
    box.remove()


def test_commit_of_an_unchanged_container_adds_no_layer(client: docker.DockerClient) -> None:
    busybox = client.images.get("busybox")
    box = client.containers.run("busybox", ["true"], detach=True)
    box.wait()
    image = box.commit()
    assert image.attrs["RootFS"]["Layers"] == busybox.attrs["RootFS"]["Layers"]
    config = client.api.inspect_image(image.id)
    assert config["Parent"] == busybox.id
    # It runs, and its files are the image's: no /etc/hosts of the engine's baked into it.
    out = client.containers.run(image.id, ["sh", "-c", "cat /etc/hosts | wc -l"], remove=True)
    assert int(out) > 0


def test_commit_of_a_stopped_container_with_pause(client: docker.DockerClient) -> None:
    box = client.containers.run("busybox", ["touch", "/test"], detach=True)
    box.wait()
    res = client.api.commit(box.id, pause=True)
    assert client.api.inspect_image(res["Id"])["Parent"] == client.images.get("busybox").id


# -- docker diff ----------------------------------------------------------------------------------

def test_diff_hides_the_engines_files(stack: Stack, client: docker.DockerClient) -> None:
    box = client.containers.run("busybox", ["touch", "/test"], detach=True)
    box.wait()
    # docker-py's own test: exactly the container's change.
    assert box.diff() == [{"Path": "/test", "Kind": 1}]
    # Writing through the engine's files changes nothing of the container's.
    other = client.containers.run("busybox", ["sh", "-c", "echo 10.9.9.9 x >> /etc/hosts; echo y > /etc/hostname"],
                                  detach=True)
    assert other.wait()["StatusCode"] == 0
    assert other.diff() is None
    # A change of its own in /etc: the folder shows, the engine's files still do not.
    third = client.containers.run("busybox", ["sh", "-c", "echo z > /etc/mine"], detach=True)
    third.wait()
    assert third.diff() == [{"Path": "/etc", "Kind": 0}, {"Path": "/etc/mine", "Kind": 1}]
    # And commit leaves them out of the layer as diff does.
    image = third.commit()
    layer_files = _layer_names(stack, image.id)
    assert "etc/mine" in layer_files and not (layer_files & {p.lstrip("/") for p in ENGINE_FILES}), layer_files


@needs_cli
def test_cli_diff(stack: Stack, client: docker.DockerClient) -> None:
    assert _cli(stack, "run", "--name", "d1", "busybox", "touch", "/test").returncode == 0
    result = _cli(stack, "diff", "d1")
    assert result.returncode == 0 and result.stdout.decode().splitlines() == ["A /test"], result


def _layer_names(stack: Stack, image_id: str) -> set[str]:
    """The files of the image's top layer, read from docker save's archive."""
    with tarfile.open(fileobj=io.BytesIO(_saved(stack, image_id))) as tf:
        manifest = json.load(tf.extractfile("manifest.json"))  # type: ignore[arg-type]
        top = manifest[0]["Layers"][-1]
        data = tf.extractfile(top).read()  # type: ignore[union-attr]
    with tarfile.open(fileobj=io.BytesIO(data)) as layer:
        return {m.name.rstrip("/") for m in layer.getmembers()}


# -- names, parents and the list ------------------------------------------------------------------

def _listed(stack: Stack, **params: Any) -> dict[str, list[str]]:
    """The list as API 1.41 (dockerd 20.10's) gives it: a nameless image's tags are <none>:<none>."""
    old = docker.APIClient(base_url=stack.base_url, version="1.41")
    try:
        return {i["Id"]: i["RepoTags"] for i in old.images(**params)}
    finally:
        old.close()


def test_a_moved_name_leaves_a_dangling_image(stack: Stack, client: docker.DockerClient) -> None:
    busybox = client.images.get("busybox")
    box = client.containers.run("busybox", ["touch", "/x"], detach=True)
    box.wait()
    first = box.commit("moving", "1")
    second = box.commit("moving", "1")  # the name moves on; the first image stays, nameless
    listed = _listed(stack)
    assert listed[first.id] == ["<none>:<none>"] and listed[second.id] == ["moving:1"]
    # From API 1.43 on, empty lists instead (today's dockerd).
    latest = {i["Id"]: (i["RepoTags"], i["RepoDigests"]) for i in client.api.images()}
    assert latest[first.id] == ([], [])
    assert [i["Id"] for i in client.api.images(filters={"dangling": True})] == [first.id]
    assert first.id not in _listed(stack, filters={"dangling": False})
    # It gets a name again: dangling no more, and removing that name deletes it (nothing else holds it).
    client.api.tag(first.id, "again", "1")
    assert client.api.images(filters={"dangling": True}) == []
    assert {"Deleted": first.id} in client.api.remove_image("again:1")
    # before/since: by creation time against named images.
    assert second.id in _listed(stack, filters={"since": busybox.id})
    assert second.id not in _listed(stack, filters={"before": busybox.id})
    with pytest.raises(docker.errors.NotFound):
        client.api.images(filters={"since": "no-such-image:1"})
    box.remove()


def test_a_parent_stays_while_its_children_do(stack: Stack, client: docker.DockerClient) -> None:
    client.images.get("busybox").tag("base", "1")
    box = client.containers.run("base:1", ["touch", "/x"], detach=True)
    box.wait()
    child = box.commit("child", "1")
    box.remove()
    base_id = client.images.get("base:1").id
    assert child.attrs["Parent"] == base_id
    # busybox:latest names it too: removing base:1 only untags. Then its last name: untagged, kept.
    assert client.api.remove_image("base:1") == [{"Untagged": "base:1"}]
    assert client.api.remove_image("busybox:latest") == [{"Untagged": "busybox:latest"}]
    # Nameless with a child: an intermediate image, listed with all only.
    assert base_id not in _listed(stack) and _listed(stack, all=True)[base_id] == ["<none>:<none>"]
    assert client.images.get(child.id).history()[1]["Id"] == base_id
    with pytest.raises(docker.errors.APIError) as err:
        client.api.remove_image(base_id, force=True)
    assert err.value.status_code == 409 and "image has dependent child images" in str(err.value)
    # Removing the child deletes the nameless parent it stood on too, as dockerd does.
    removed = client.api.remove_image("child:1")
    assert removed == [{"Untagged": "child:1"}, {"Deleted": child.id}, {"Deleted": base_id}], removed
    assert _listed(stack, all=True) == {}


def test_prune_takes_a_nameless_chain(client: docker.DockerClient) -> None:
    box = client.containers.run("busybox", ["touch", "/x"], detach=True)
    box.wait()
    middle = client.api.commit(box.id)["Id"]
    box.remove()
    top_box = client.containers.run(middle, ["touch", "/y"], detach=True)
    top_box.wait()
    top = client.api.commit(top_box.id)["Id"]
    top_box.remove()
    assert client.api.inspect_image(top)["Parent"] == middle
    # Only the head is dangling; the middle one is intermediate.
    assert [i["Id"] for i in client.api.images(filters={"dangling": True})] == [top]
    pruned = client.api.prune_images()
    deleted = {d.get("Deleted") for d in pruned["ImagesDeleted"] or []}
    assert {top, middle} <= deleted
    assert client.images.get("busybox").tags == ["busybox:latest"]


def test_save_by_id_or_bare_repository(stack: Stack, client: docker.DockerClient) -> None:
    image = client.images.get("busybox")
    image.tag("other", "1")
    # docker-py's Image.save() names the image by id: the archive holds it without names (dockerd's).
    data = b"".join(image.save())
    assert list(client.api.load_image(data)) == [{"stream": f"Loaded image ID: {image.id}\n"}]
    assert [i.id for i in client.images.load(data)] == [image.id]
    # Its names stay as they were, and no nameless copy is left: untagging both deletes it.
    assert sorted(client.images.get(image.id).tags) == ["busybox:latest", "other:1"]
    # A bare repository brings every tag of it, and only those.
    image.tag("busybox", "v2")
    names = [m["stream"] for m in client.api.load_image(_saved(stack, "busybox"))]
    assert sorted(names) == ["Loaded image: busybox:latest\n", "Loaded image: busybox:v2\n"]
    client.api.remove_image("other:1")
    client.api.remove_image("busybox:v2")
    assert {"Deleted": image.id} in client.api.remove_image("busybox:latest")
