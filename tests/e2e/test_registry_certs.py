"""A private registry with its own CA, through the API, as dockerd's /etc/docker/certs.d: pull, push and
login work when and only when the CA is in ``<etc>/certs.d/<host:port>/ca.crt``; without it, Docker's
x509 error with a 500, and nothing half pulled."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.e2e.stack import Stack
from tests.support.registry import REGISTRY_BIN, RunningRegistry, run_registry

UNKNOWN_AUTHORITY = "x509: certificate signed by unknown authority"


@pytest.fixture
def tls_registry(tmp_path: Path) -> Iterator[RunningRegistry]:
    if not REGISTRY_BIN.exists():
        pytest.skip("docker-registry not installed")
    with run_registry(tmp_path / "tls-registry", auth=True, tls=True) as reg:
        yield reg


def _trust(stack: Stack, reg: RunningRegistry) -> Path:
    assert reg.ca is not None
    folder = stack.paths.certs_d / f"{reg.host}:{reg.port}"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(reg.ca.ca_cert, folder / "ca.crt")
    return folder


def _content(stack: Stack) -> set[str]:
    root = stack.paths.highlevel_lib / "content"
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def _refused(call: object, *args: object, **kwargs: object) -> docker.errors.APIError:
    with pytest.raises(docker.errors.APIError) as failed:
        call(*args, **kwargs)  # type: ignore[operator]
    return failed.value


def test_py_certs_d_for_pull_push_login(
    stack: Stack, client: docker.DockerClient, tls_registry: RunningRegistry
) -> None:
    server = f"{tls_registry.host}:{tls_registry.port}"
    auth = {"username": "skiff", "password": "s3cret", "serveraddress": server}
    repo = f"{server}/tls/bb"
    client.images.get("busybox").tag(repo, "v1")
    if not os.environ.get("SKIFF_CERTS_D"):
        assert stack.paths.certs_d == stack.prefix / "etc" / "skiff" / "certs.d"  # moved under --root

    # No CA: refused with Docker's words, and nothing is tried over plain http. Login is a 500; a push,
    # as dockerd's, has begun its output ("The push refers to...") and ends it with the error.
    error = _refused(client.login, "skiff", "s3cret", registry=server)
    assert error.status_code == 500, error
    assert f'Get "https://{server}/v2/": {UNKNOWN_AUTHORITY}' in str(error.explanation)
    pushed = list(client.api.push(repo, tag="v1", auth_config=auth, stream=True, decode=True))
    assert UNKNOWN_AUTHORITY in pushed[-1]["error"], pushed

    folder = _trust(stack, tls_registry)
    assert client.login("skiff", "s3cret", registry=server)["Status"] == "Login Succeeded"
    pushed = list(client.api.push(repo, tag="v1", auth_config=auth, stream=True, decode=True))
    assert not [m for m in pushed if "error" in m], pushed
    image_id = client.images.get(repo + ":v1").id
    client.images.remove(repo + ":v1")

    # The CA taken away: the pull fails before anything is fetched.
    shutil.rmtree(folder)
    before = _content(stack)
    error = _refused(client.api.pull, repo, tag="v1", auth_config=auth)
    assert error.status_code == 500 and UNKNOWN_AUTHORITY in str(error.explanation), error
    assert not client.images.list(name=repo)
    assert _content(stack) == before

    _trust(stack, tls_registry)
    assert client.images.pull(repo, tag="v1", auth_config=auth).id == image_id
    assert client.containers.run(repo + ":v1", ["echo", "trusted"], remove=True) == b"trusted\n"


def test_cli_certs_d(stack: Stack, client: docker.DockerClient, tls_registry: RunningRegistry) -> None:
    docker_bin = shutil.which("docker")
    if docker_bin is None:
        pytest.skip("docker CLI not installed")
    env = dict(os.environ, DOCKER_HOST=stack.base_url, DOCKER_CONFIG=str(stack.prefix / "docker-config"))

    def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([docker_bin, *args], capture_output=True, text=True, timeout=60, env=env, input=stdin)

    server = f"{tls_registry.host}:{tls_registry.port}"
    name = f"{server}/cli/bb:v1"
    assert cli("tag", "busybox", name).returncode == 0
    login = cli("login", "-u", "skiff", "--password-stdin", server, stdin="s3cret\n")
    assert login.returncode != 0 and UNKNOWN_AUTHORITY in login.stderr, login.stderr

    folder = _trust(stack, tls_registry)
    login = cli("login", "-u", "skiff", "--password-stdin", server, stdin="s3cret\n")
    assert login.returncode == 0 and "Login Succeeded" in login.stdout, login.stderr
    pushed = cli("push", name)
    assert pushed.returncode == 0, pushed.stderr
    assert cli("rmi", name).returncode == 0

    shutil.rmtree(folder)
    pulled = cli("pull", name)
    assert pulled.returncode != 0
    assert "Error response from daemon" in pulled.stderr and UNKNOWN_AUTHORITY in pulled.stderr, pulled.stderr
    assert f"https://{server}/v2/" in pulled.stderr
    assert cli("image", "inspect", name).returncode != 0

    _trust(stack, tls_registry)
    pulled = cli("pull", name)
    assert pulled.returncode == 0, pulled.stderr
    run = cli("run", "--rm", name, "echo", "via-cli")
    assert run.returncode == 0 and run.stdout == "via-cli\n", run.stderr
