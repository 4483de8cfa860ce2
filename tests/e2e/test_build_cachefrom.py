"""docker build --cache-from an image with no local parent chain (saved, removed, loaded back: as
one pulled from a registry), as dockerd's classic builder reuses it: every step matched by the
image's history says ' ---> Using cache' and runs nothing, the result is the cache image itself;
a changed file reruns the steps from its COPY on, over images composed of the cache image's layers;
without --cache-from the loaded image is not used."""

from __future__ import annotations

import shutil
from pathlib import Path

import docker
import pytest

from tests.e2e.stack import Stack
from tests.e2e.test_build import build_py, cli, make_context, text_of

pytestmark = pytest.mark.skipif(shutil.which("docker") is None, reason="docker CLI not installed")

# The first RUN writes a random marker: a rerun would write another.
DOCKERFILE = """\
FROM busybox
ENV MODE=cachefrom
RUN od -An -tx1 -N8 /dev/urandom > /marker
COPY input.txt /input.txt
RUN cat /input.txt > /copied && echo second-run-ran
WORKDIR /app
CMD ["cat", "/marker"]
"""
STEPS = 7


def _marker(client: docker.DockerClient, image: str, path: str = "/marker") -> bytes:
    return client.containers.run(image, ["cat", path], remove=True)


def test_cache_from_a_loaded_image_reuses_every_step_and_reruns_after_a_changed_copy(
        stack: Stack, client: docker.DockerClient, tmp_path: Path) -> None:
    ctx = make_context(tmp_path / "ctx", {"Dockerfile": DOCKERFILE, "input.txt": "v1\n"})
    first = cli(stack, "build", "-t", "cf:1", str(ctx), buildkit="0")
    assert first.returncode == 0, first.stderr + first.stdout
    assert first.stdout.count(" ---> Running in ") == 2
    original = client.images.get("cf:1")
    marker = _marker(client, "cf:1")
    layers = original.attrs["RootFS"]["Layers"]

    # As if pulled on a fresh machine: saved, removed with its nameless parents, the cache index
    # emptied, loaded back with no parent chain.
    archive = tmp_path / "cf.tar"
    assert cli(stack, "save", "-o", str(archive), "cf:1").returncode == 0
    assert cli(stack, "rmi", "cf:1").returncode == 0
    assert cli(stack, "builder", "prune", "-f").returncode == 0
    loaded = cli(stack, "load", "-i", str(archive))
    assert loaded.returncode == 0, loaded.stderr
    assert client.images.get("cf:1").id == original.id

    # Without --cache-from the loaded image is no cache (as dockerd).
    plain = cli(stack, "build", "-t", "cf:plain", str(ctx), buildkit="0")
    assert plain.returncode == 0, plain.stderr
    assert "Using cache" not in plain.stdout and plain.stdout.count(" ---> Running in ") == 2
    assert _marker(client, "cf:plain") != marker

    # With it: every step reused (the local cache's hits of the plain build are not the named
    # image's, so its history decides), nothing run, the cache image itself the result.
    reused = cli(stack, "build", "--cache-from", "cf:1", "-t", "cf:2", str(ctx), buildkit="0")
    assert reused.returncode == 0, reused.stderr + reused.stdout
    steps = reused.stdout.split("Step ")[1:]
    assert len(steps) == STEPS
    assert [" ---> Using cache" in s for s in steps] == [False] + [True] * (STEPS - 1), reused.stdout
    assert " ---> Running in " not in reused.stdout
    rebuilt = client.images.get("cf:2")
    assert rebuilt.id == original.id and rebuilt.attrs["RootFS"]["Layers"] == layers
    assert _marker(client, "cf:2") == marker
    assert rebuilt.attrs["Config"]["WorkingDir"] == "/app"

    # A changed file (docker-py this time): ENV and the first RUN still come from the cache image
    # (the marker kept), its COPY and every step after it made again over the composed images.
    (ctx / "input.txt").write_text("v2\n")
    image_id, messages = build_py(client, ctx, tag="cf:3", cache_from=["cf:1"])
    out = text_of(messages)
    assert image_id, out
    steps = out.split("Step ")[1:]
    assert [" ---> Using cache" in s for s in steps] == [False, True, True, False, False, False, False], out
    assert out.count(" ---> Running in ") == 1 and "second-run-ran" in out
    assert _marker(client, "cf:3") == marker
    assert _marker(client, "cf:3", "/copied") == b"v2\n"
    changed = client.images.get("cf:3").attrs
    assert changed["RootFS"]["Layers"][:-3] == layers[:-3] and changed["RootFS"]["Layers"] != layers
    assert changed["Config"]["Env"][-1] == "MODE=cachefrom"
    history = [h["CreatedBy"] for h in client.api.history("cf:3")]
    assert any("od -An -tx1 -N8 /dev/urandom" in h for h in history)

    # The composed images hold the cache image's layers, not copies: the cache image can go and
    # the rebuilt one still runs.
    assert cli(stack, "rmi", "cf:1", "cf:2").returncode == 0
    assert _marker(client, "cf:3") == marker


def test_cache_from_a_loaded_image_with_a_different_base_is_not_used(
        stack: Stack, client: docker.DockerClient, tmp_path: Path) -> None:
    ctx = make_context(tmp_path / "ctx", {"Dockerfile": DOCKERFILE, "input.txt": "v1\n"})
    assert cli(stack, "build", "-t", "cfbase:1", str(ctx), buildkit="0").returncode == 0
    assert cli(stack, "builder", "prune", "-f").returncode == 0
    # The same instructions over another base: the cache image's history does not begin with it.
    other = DOCKERFILE.replace("FROM busybox", "FROM busybox\nLABEL base=other")
    (ctx / "Dockerfile").write_text(other)
    result = cli(stack, "build", "--cache-from", "cfbase:1", "-t", "cfbase:2", str(ctx), buildkit="0")
    assert result.returncode == 0, result.stderr
    assert "Using cache" not in result.stdout and result.stdout.count(" ---> Running in ") == 2


MULTISTAGE = """\
FROM busybox AS builder
ENV PART=builder
RUN od -An -tx1 -N8 /dev/urandom > /built
FROM busybox
ENV STAGE=final
COPY --from=builder /built /built
RUN cp /built /copied
CMD ["cat", "/copied"]
"""


def test_cache_from_each_stage_its_own_image(stack: Stack, client: docker.DockerClient, tmp_path: Path) -> None:
    # The builder stage's image and the final one both named: each stage starts over with all of them.
    ctx = make_context(tmp_path / "ctx", {"Dockerfile": MULTISTAGE})
    assert cli(stack, "build", "--target", "builder", "-t", "cfm:builder", str(ctx), buildkit="0").returncode == 0
    first = cli(stack, "build", "-t", "cfm:1", str(ctx), buildkit="0")
    assert first.returncode == 0, first.stderr
    original, marker = client.images.get("cfm:1").id, client.containers.run("cfm:1", remove=True)
    archive = tmp_path / "cfm.tar"
    assert cli(stack, "save", "-o", str(archive), "cfm:builder", "cfm:1").returncode == 0
    assert cli(stack, "rmi", "cfm:builder", "cfm:1").returncode == 0
    assert cli(stack, "builder", "prune", "-f").returncode == 0
    assert cli(stack, "load", "-i", str(archive)).returncode == 0
    reused = cli(stack, "build", "--cache-from", "cfm:builder", "--cache-from", "cfm:1", "-t", "cfm:2", str(ctx),
                 buildkit="0")
    assert reused.returncode == 0, reused.stderr + reused.stdout
    assert reused.stdout.count(" ---> Using cache") == 6 and " ---> Running in " not in reused.stdout, reused.stdout
    assert client.images.get("cfm:2").id == original
    assert client.containers.run("cfm:2", remove=True) == marker
