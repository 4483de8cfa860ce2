"""Debian's docker-compose 1.29 against Skiff: a multi-service project with a user network, a named volume,
a published port, a healthcheck that another service waits on (depends_on: service_healthy) and an image
built from the project (build:) goes up, is listed, logged, exec'd into, run --rm, scaled, restarted and
taken down with -v, leaving no container, network or volume behind."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import docker
import pytest

from tests.e2e.stack import Stack
from tests.support.tasks import wait_for

COMPOSE = shutil.which("docker-compose")

PROJECT = """\
version: "2.4"
services:
  web:
    image: busybox
    command: ["sh", "-c", "mkdir -p /www && echo hello from web > /www/index.html && exec httpd -f -p 8080 -h /www"]
    ports: ["127.0.0.1:{port}:8080"]
    networks: [back]
    healthcheck:
      test: ["CMD", "wget", "-q", "-O", "-", "http://127.0.0.1:8080/"]
      interval: 1s
      timeout: 2s
      retries: 20
  worker:
    build: ./worker
    command: ["sh", "-c", "echo worker up; while true; do wget -q -O - http://web:8080/ >> /data/seen; sleep 1; done"]
    depends_on:
      web:
        condition: service_healthy
    volumes: ["data:/data"]
    networks: [back]
networks:
  back: {{}}
volumes:
  data: {{}}
"""

DOCKERFILE = """\
FROM busybox
RUN echo built by compose > /built
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def project(stack: Stack, client: docker.DockerClient, tmp_path: Path) -> tuple[Path, str, int]:
    if COMPOSE is None:
        pytest.skip("docker-compose is not installed (Debian's docker-compose package)")
    port = free_port()
    folder = tmp_path / "project"
    (folder / "worker").mkdir(parents=True)
    (folder / "worker" / "Dockerfile").write_text(DOCKERFILE)
    (folder / "docker-compose.yml").write_text(PROJECT.format(port=port))
    return folder, f"skc{secrets.token_hex(3)}", port


def compose(stack: Stack, folder: Path, name: str, *args: str,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DOCKER_HOST=stack.base_url, DOCKER_CONFIG=str(stack.prefix / "docker-config"),
               COMPOSE_HTTP_TIMEOUT="120")
    env.pop("DOCKER_BUILDKIT", None)
    assert COMPOSE is not None
    return subprocess.run([COMPOSE, "--no-ansi", "-p", name, *args], cwd=folder, capture_output=True, text=True,
                          timeout=timeout, env=env)


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"{done.args}: {done.stdout}\n{done.stderr}"
    return done.stdout


def test_compose_project_lifecycle(stack: Stack, client: docker.DockerClient, project: tuple[Path, str, int]) -> None:
    folder, name, port = project
    try:
        ok(compose(stack, folder, name, "up", "-d"))
        # depends_on service_healthy: the worker was started only once web was healthy.
        web = client.containers.get(f"{name}_web_1")
        assert web.attrs["State"]["Health"]["Status"] == "healthy"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as answer:
            assert answer.read() == b"hello from web\n"
        listed = ok(compose(stack, folder, name, "ps"))
        assert f"{name}_web_1" in listed and f"{name}_worker_1" in listed and "Up" in listed
        # The worker reaches web by its service name over the user network, into the named volume.
        ok(compose(stack, folder, name, "exec", "-T", "worker", "cat", "/built"))
        wait_for(lambda: "hello from web" in compose(stack, folder, name, "exec", "-T", "worker", "cat",
                                                     "/data/seen").stdout, 30, "the worker's fetches")
        assert "worker up" in ok(compose(stack, folder, name, "logs", "--no-color", "worker"))
        follow(stack, folder, name)
        ran = ok(compose(stack, folder, name, "run", "--rm", "worker", "cat", "/built"))
        assert "built by compose" in ran
        ok(compose(stack, folder, name, "up", "-d", "--scale", "worker=3"))
        assert len(ok(compose(stack, folder, name, "ps", "-q", "worker")).split()) == 3
        started = web.attrs["State"]["StartedAt"]
        ok(compose(stack, folder, name, "restart", "web"))
        web.reload()
        assert web.attrs["State"]["Running"] and web.attrs["State"]["StartedAt"] != started
    finally:
        down = compose(stack, folder, name, "down", "-v", "--remove-orphans")
    assert down.returncode == 0, down.stderr
    label = f"com.docker.compose.project={name}"
    assert client.containers.list(all=True, filters={"label": label}) == []
    assert client.networks.list(filters={"label": label}) == []
    assert client.volumes.list(filters={"label": label}) == []


def follow(stack: Stack, folder: Path, name: str) -> None:
    """``logs -f`` streams: a line the worker writes after it began is seen."""
    env = dict(os.environ, DOCKER_HOST=stack.base_url, DOCKER_CONFIG=str(stack.prefix / "docker-config"))
    assert COMPOSE is not None
    proc = subprocess.Popen([COMPOSE, "--no-ansi", "-p", name, "logs", "-f", "--no-color", "--tail", "1", "web"],
                            cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        marker = f"followed-{secrets.token_hex(3)}"
        ok(compose(stack, folder, name, "exec", "-T", "web", "sh", "-c", f"echo {marker} > /proc/1/fd/1"))
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if marker in line:
                break
        else:
            raise AssertionError("logs -f did not show the new line")
    finally:
        proc.terminate()
        proc.wait(10)


def test_dev_stack_file_is_valid() -> None:
    """docker-compose.dev.yml (Skiff's own services in containers) as docker-compose 1.29 reads it."""
    if COMPOSE is None:
        pytest.skip("docker-compose is not installed (Debian's docker-compose package)")
    checkout = Path(__file__).resolve().parents[2]
    done = subprocess.run([COMPOSE, "-f", str(checkout / "docker-compose.dev.yml"), "config"], capture_output=True,
                          text=True, timeout=60, cwd=checkout)
    assert done.returncode == 0, done.stderr
    for service in ("highlevel", "daemon", "apiserver"):
        assert f"skiff-{service}" in done.stdout
    assert done.stdout.count("privileged: true") == 3 and done.stdout.count("pid: host") == 3
