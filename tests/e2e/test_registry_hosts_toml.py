"""containerd's ``hosts.toml`` (``<certs.d>/<registry>/hosts.toml``, services/common/registry_hosts.py) for
every pull through the Docker API, against Debian's docker-registry on 127.0.0.1:

- ``registry.k8s.io/pause:3.6`` (a busybox-built stand-in pushed to a loopback registry as
  ``pause:3.6``) is pulled through a ``[host."http://127.0.0.1:<port>"]`` redirect and named under
  its real name; a host that may only ``pull`` serves it by digest but does not resolve its tag;
- a TLS mirror in ``_default/hosts.toml`` is trusted through its ``ca`` (a path relative to the
  folder), or reached with ``skip_verify``; with neither, Docker's x509 error naming the host tried.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.e2e.stack import Stack
from tests.support.registry import REGISTRY_BIN, RunningRegistry, run_registry

pytestmark = [
    pytest.mark.skipif(shutil.which("docker") is None, reason="docker CLI not installed"),
    pytest.mark.skipif(not REGISTRY_BIN.exists(), reason="docker-registry not installed"),
]


def cli(stack: Stack, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DOCKER_HOST=stack.base_url, DOCKER_CONFIG=str(stack.prefix / "docker-config"))
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, env=env)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args}: {result.stderr}"
    return result.stdout


def hosts_toml(stack: Stack, namespace: str, text: str) -> Path:
    folder = stack.paths.certs_d / namespace
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "hosts.toml").write_text(text)
    return folder


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[RunningRegistry]:
    with run_registry(tmp_path / "registry") as reg:
        yield reg


@pytest.fixture
def tls_registry(tmp_path: Path) -> Iterator[RunningRegistry]:
    with run_registry(tmp_path / "tls-registry", tls=True) as reg:
        yield reg


def test_pause_image_from_a_loopback_registry(stack: Stack, client: docker.DockerClient,
                                              registry: RunningRegistry) -> None:
    local = f"{registry.host}:{registry.port}"
    image_id = client.images.get("busybox").id
    ok(cli(stack, "tag", "busybox", f"{local}/pause:3.6"))
    ok(cli(stack, "push", f"{local}/pause:3.6"))
    ok(cli(stack, "rmi", f"{local}/pause:3.6"))

    # No hosts.toml: registry.k8s.io itself, which this machine cannot reach.
    refused = cli(stack, "pull", "registry.k8s.io/pause:3.6")
    assert refused.returncode != 0 and "registry.k8s.io" in refused.stderr, refused.stderr

    folder = hosts_toml(stack, "registry.k8s.io", f'''
server = "https://registry.k8s.io"

[host."http://{local}"]
  capabilities = ["pull", "resolve"]
''')
    pulled = ok(cli(stack, "pull", "registry.k8s.io/pause:3.6"))
    assert "Status: Downloaded newer image for registry.k8s.io/pause:3.6" in pulled, pulled
    shown = json.loads(ok(cli(stack, "image", "inspect", "registry.k8s.io/pause:3.6")))[0]
    assert shown["Id"] == image_id and "registry.k8s.io/pause:3.6" in shown["RepoTags"]
    (digest_name,) = [d for d in shown["RepoDigests"] if d.startswith("registry.k8s.io/pause@sha256:")]
    assert ok(cli(stack, "run", "--rm", "registry.k8s.io/pause:3.6", "echo", "paused")) == "paused\n"

    # A host that may pull but not resolve: a digest comes from it; a tag goes to the server (unreachable).
    ok(cli(stack, "rmi", "registry.k8s.io/pause:3.6"))
    (folder / "hosts.toml").write_text(f'''
server = "https://registry.k8s.io"

[host."http://{local}"]
  capabilities = ["pull"]
''')
    ok(cli(stack, "pull", digest_name))
    assert client.images.get(digest_name).id == image_id
    by_tag = cli(stack, "pull", "registry.k8s.io/pause:3.6")
    assert by_tag.returncode != 0 and local not in by_tag.stderr, by_tag.stderr


def test_default_hosts_toml_tls_mirror_ca_and_skip_verify(stack: Stack, client: docker.DockerClient,
                                                         tls_registry: RunningRegistry) -> None:
    assert tls_registry.ca is not None
    local = f"{tls_registry.host}:{tls_registry.port}"
    # Seeded through Docker's certs.d (the registry's own folder), which then goes away.
    trust = stack.paths.certs_d / local
    trust.mkdir(parents=True)
    shutil.copyfile(tls_registry.ca.ca_cert, trust / "ca.crt")
    ok(cli(stack, "tag", "busybox", f"{local}/skiff/bb:v1"))
    ok(cli(stack, "push", f"{local}/skiff/bb:v1"))
    ok(cli(stack, "rmi", f"{local}/skiff/bb:v1"))
    shutil.rmtree(trust)

    # _default serves any registry without a folder of its own; ca relative to the folder.
    folder = hosts_toml(stack, "_default", f'[host."https://{local}"]\n  ca = "mirror-ca.pem"\n')
    shutil.copyfile(tls_registry.ca.ca_cert, folder / "mirror-ca.pem")
    ok(cli(stack, "pull", "ghcr.io/skiff/bb:v1"))
    assert client.images.get("ghcr.io/skiff/bb:v1").id == client.images.get("busybox").id
    ok(cli(stack, "rmi", "ghcr.io/skiff/bb:v1"))

    (folder / "hosts.toml").write_text(f'[host."https://{local}"]\n  skip_verify = true\n')
    ok(cli(stack, "pull", "ghcr.io/skiff/bb:v1"))
    ok(cli(stack, "rmi", "ghcr.io/skiff/bb:v1"))

    # Neither: the mirror's certificate is refused, then the server itself (ghcr.io) is tried and fails.
    (folder / "hosts.toml").write_text(f'[host."https://{local}"]\n')
    refused = cli(stack, "pull", "ghcr.io/skiff/bb:v1")
    assert refused.returncode != 0, refused.stderr
    assert "x509: certificate signed by unknown authority" in refused.stderr, refused.stderr
    assert f"https://{local}" in refused.stderr and "ghcr.io" in refused.stderr

    # A broken hosts.toml: the pull is refused naming the file.
    (folder / "hosts.toml").write_text('[host."https://x"]\n  capabilities = ["fly"]\n')
    broken = cli(stack, "pull", "ghcr.io/skiff/bb:v1")
    assert broken.returncode != 0 and "hosts.toml" in broken.stderr and "unknown capability" in broken.stderr
