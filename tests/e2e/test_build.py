"""docker build / POST /build (Docker's classic builder) through the real docker CLI and docker-py:
multi-stage with COPY --from, build args, .dockerignore, the layer cache (a rebuild runs no step, a
changed file reruns only the steps after its COPY), a failing RUN with and without --force-rm,
--target, the image config (HEALTHCHECK, USER, WORKDIR) and history, the built image run; hostile
contexts refused cleanly with nothing written outside the build's folders."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.e2e.stack import Stack

pytestmark = pytest.mark.skipif(shutil.which("docker") is None, reason="docker CLI not installed")

MULTI = """\
# syntax=docker/dockerfile:1
ARG BASE=busybox
FROM ${BASE} AS builder
ARG GREETING=hello
WORKDIR /src
COPY greet.txt ./
RUN echo "$GREETING from $(cat greet.txt)" > /src/out.txt \\
 && echo built
FROM busybox AS unused
RUN echo this stage is never built && false
FROM busybox
LABEL org.example.kind=test
COPY --from=builder /src/out.txt /app/out.txt
COPY data/ /app/data/
RUN echo final step ran
USER 1000:1000
WORKDIR /app
HEALTHCHECK --interval=5s --timeout=3s --retries=2 CMD cat /app/out.txt
CMD ["cat", "/app/out.txt"]
"""


def env_of(stack: Stack, buildkit: str | None = None) -> dict[str, str]:
    env = dict(os.environ, DOCKER_HOST=stack.base_url, DOCKER_CONFIG=str(stack.prefix / "docker-config"))
    env.pop("DOCKER_BUILDKIT", None)
    if buildkit is not None:
        env["DOCKER_BUILDKIT"] = buildkit
    return env


def cli(stack: Stack, *args: str, buildkit: str | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout,
                          env=env_of(stack, buildkit))


def make_context(folder: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return folder


def multi_context(folder: Path) -> Path:
    return make_context(folder, {
        "Dockerfile": MULTI, "greet.txt": "skiff\n", "data/a.txt": "A\n", "data/secret.key": "nope\n",
        "data/keep.key": "kept\n", "notes.md": "ignored\n",
        ".dockerignore": "# comment\n*.md\ndata/*.key\n!data/keep.key\n"})


def build_py(client: docker.DockerClient, context: Path, **kwargs: Any) -> tuple[str, list[dict[str, Any]]]:
    """docker-py's low-level build: the image id and every message."""
    messages = list(client.api.build(path=str(context), decode=True, **kwargs))
    ids = [m["aux"]["ID"] for m in messages if "aux" in m]
    return (ids[-1] if ids else ""), messages


def text_of(messages: list[dict[str, Any]]) -> str:
    return "".join(m.get("stream", "") for m in messages)


def test_multistage_build_cli_and_run(stack: Stack, client: docker.DockerClient, tmp_path: Path) -> None:
    ctx = multi_context(tmp_path / "ctx")
    result = cli(stack, "build", "-t", "built:v1", "-t", "built:v2", "--build-arg", "GREETING=hi", str(ctx))
    assert result.returncode == 0, result.stderr + result.stdout
    out = result.stdout
    assert "Step 1/" in out and ": FROM ${BASE} AS builder" in out
    assert "this stage is never built" not in out
    assert " ---> Running in " in out and "built\n" in out
    assert "Successfully tagged built:v1" in out and "Successfully tagged built:v2" in out
    image = client.images.get("built:v1")
    cfg = image.attrs["Config"]
    assert cfg["User"] == "1000:1000" and cfg["WorkingDir"] == "/app"
    assert cfg["Healthcheck"] == {"Test": ["CMD-SHELL", "cat /app/out.txt"], "Interval": 5_000_000_000,
                                  "Timeout": 3_000_000_000, "Retries": 2}
    assert cfg["Labels"]["org.example.kind"] == "test"
    assert cfg["Cmd"] == ["cat", "/app/out.txt"]
    # The built image runs: the first stage's output, the context's files minus .dockerignore's.
    assert client.containers.run("built:v1", remove=True) == b"hi from skiff\n"
    listing = client.containers.run("built:v1", ["ls", "/app/data"], remove=True).decode().split()
    assert listing == ["a.txt", "keep.key"]
    history = cli(stack, "image", "history", "--no-trunc", "--format", "{{.CreatedBy}}", "built:v1").stdout
    assert '/bin/sh -c #(nop)  CMD ["cat" "/app/out.txt"]' in history
    assert "/bin/sh -c #(nop)  WORKDIR /app" in history
    assert "/bin/sh -c echo final step ran" in history
    builder_history = [h["CreatedBy"] for h in client.api.history("built:v1")]
    assert any(h.startswith("/bin/sh -c #(nop) COPY dir:") for h in builder_history)
