"""The images endpoints through the real docker CLI: a loopback registry (plain and basic auth),
save | load through a pipe file, import, tag, history, prune, commit, rmi conflicts."""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.e2e.stack import Stack
from tests.support.registry import REGISTRY_BIN, RunningRegistry, run_registry

pytestmark = pytest.mark.skipif(shutil.which("docker") is None, reason="docker CLI not installed")


def env_of(stack: Stack) -> dict[str, str]:
    return dict(os.environ, DOCKER_HOST=stack.base_url, DOCKER_CONFIG=str(stack.prefix / "docker-config"))


def cli(stack: Stack, *args: str, timeout: float = 60, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, env=env_of(stack),
                          input=stdin)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args}: {result.stderr}"
    return result.stdout


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[RunningRegistry]:
    if not REGISTRY_BIN.exists():
        pytest.skip("docker-registry not installed")
    with run_registry(tmp_path / "registry") as reg:
        yield reg


@pytest.fixture
def auth_registry(tmp_path: Path) -> Iterator[RunningRegistry]:
    if not REGISTRY_BIN.exists():
        pytest.skip("docker-registry not installed")
    with run_registry(tmp_path / "auth-registry", auth=True) as reg:
        yield reg


def test_cli_push_rmi_pull_run(stack: Stack, client: docker.DockerClient, registry: RunningRegistry) -> None:
    name = f"{registry.host}:{registry.port}/test/bb:v1"
    ok(cli(stack, "tag", "busybox", name))
    pushed = ok(cli(stack, "push", name))
    assert f"The push refers to repository [{registry.host}:{registry.port}/test/bb]" in pushed
    assert "v1: digest: sha256:" in pushed
    ok(cli(stack, "rmi", name))
    assert cli(stack, "image", "inspect", name).returncode != 0
    pulled = ok(cli(stack, "pull", name))
    assert "Digest: sha256:" in pulled and "Status: " in pulled
    assert ok(cli(stack, "run", "--rm", name, "echo", "from-registry")) == "from-registry\n"


def test_cli_run_pulls_missing_image(stack: Stack, client: docker.DockerClient, registry: RunningRegistry) -> None:
    name = f"{registry.host}:{registry.port}/test/only-remote:v2"
    ok(cli(stack, "tag", "busybox", name))
    ok(cli(stack, "push", name))
    ok(cli(stack, "rmi", name))
    run = cli(stack, "run", "--rm", name, "echo", "pulled-by-run")
    assert run.returncode == 0, run.stderr
    assert run.stdout == "pulled-by-run\n"
    assert "Unable to find image" in run.stderr


def test_cli_login_push_pull(stack: Stack, client: docker.DockerClient, auth_registry: RunningRegistry) -> None:
    server = f"{auth_registry.host}:{auth_registry.port}"
    name = f"{server}/private/bb:v1"
    ok(cli(stack, "tag", "busybox", name))
    denied = cli(stack, "push", name)
    assert denied.returncode != 0
    bad = cli(stack, "login", "-u", "skiff", "--password-stdin", server, stdin="wrong\n")
    assert bad.returncode != 0 and "401" in bad.stderr
    assert "Login Succeeded" in ok(cli(stack, "login", "-u", "skiff", "--password-stdin", server, stdin="s3cret\n"))
    ok(cli(stack, "push", name))
    ok(cli(stack, "rmi", name))
    ok(cli(stack, "pull", name))
    assert ok(cli(stack, "run", "--rm", name, "echo", "private")) == "private\n"


def test_cli_save_load_through_a_pipe(stack: Stack, client: docker.DockerClient) -> None:
    ok(cli(stack, "tag", "busybox", "roundtrip:v1"))
    env = env_of(stack)
    with subprocess.Popen(["docker", "save", "roundtrip:v1"], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE) as save:
        try:
            assert save.stdout is not None
            # Readable means the archive is already streaming (the engine wrote it whole first):
            # removing the image now cannot change it. Nothing is read here: load gets every byte.
            readable, _, _ = select.select([save.stdout], [], [], 30)
            assert readable, "docker save sent nothing within 30 s"
            ok(cli(stack, "rmi", "roundtrip:v1"))
            load = subprocess.run(["docker", "load"], stdin=save.stdout, capture_output=True, text=True,
                                  env=env, timeout=60)
        finally:
            if save.poll() is None:
                save.kill()
            _, err = save.communicate(timeout=30)
    assert save.returncode == 0, err
    assert load.returncode == 0, load.stderr
    assert "Loaded image: roundtrip:v1" in load.stdout
    assert ok(cli(stack, "run", "--rm", "roundtrip:v1", "echo", "loaded")) == "loaded\n"


def test_cli_import_tag_history_prune(stack: Stack, client: docker.DockerClient, tmp_path: Path) -> None:
    rootfs = tmp_path / "export.tar"
    with open(rootfs, "wb") as out:
        exported = subprocess.run(["docker", "save", "busybox"], stdout=out, env=env_of(stack), timeout=60)
    assert exported.returncode == 0
    # A root filesystem tar: the busybox layer out of the saved archive.
    layer = _first_layer(rootfs, tmp_path)
    image_id = ok(cli(stack, "import", "-c", 'CMD ["/bin/echo", "imported-cmd"]', "-c", "ENV A=b",
                      "-m", "from a tar", str(layer), "imported:v1")).strip()
    assert image_id.startswith("sha256:")
    assert ok(cli(stack, "run", "--rm", "imported:v1")) == "imported-cmd\n"
    ok(cli(stack, "tag", "imported:v1", "imported:v2"))
    listed = ok(cli(stack, "images", "--filter", "reference=imported", "--format", "{{.Tag}}")).split()
    assert sorted(listed) == ["v1", "v2"]
    history = json.loads(ok(cli(stack, "history", "--format", "{{json .}}", "--no-trunc", "imported:v1"))
                         .splitlines()[0])
    assert history["Comment"] == "from a tar" and history["ID"] == image_id
    dangling = ok(cli(stack, "import", str(layer))).strip()
    assert dangling in ok(cli(stack, "images", "-q", "--no-trunc", "--filter", "dangling=true"))
    pruned = ok(cli(stack, "image", "prune", "-f"))
    assert dangling in pruned
    assert cli(stack, "image", "inspect", dangling).returncode != 0
    assert ok(cli(stack, "image", "inspect", "-f", "{{.Id}}", "imported:v2")).strip() == image_id


def _first_layer(archive: Path, workdir: Path) -> Path:
    import tarfile

    with tarfile.open(archive) as tf:
        manifest = json.load(tf.extractfile("manifest.json"))  # type: ignore[arg-type]
        member = tf.extractfile(manifest[0]["Layers"][0])
        assert member is not None
        out = workdir / "layer.tar"
        out.write_bytes(member.read())
    return out


def test_cli_commit_and_rmi_in_use(stack: Stack, client: docker.DockerClient) -> None:
    ok(cli(stack, "run", "--name", "to-commit", "busybox", "sh", "-c", "echo committed-content > /marker"))
    ok(cli(stack, "commit", "-c", 'CMD ["cat", "/marker"]', "-m", "a marker", "to-commit", "committed:v1"))
    assert ok(cli(stack, "run", "--rm", "committed:v1")) == "committed-content\n"
    assert ok(cli(stack, "run", "--rm", "committed:v1", "cat", "/marker")) == "committed-content\n"
    image_id = ok(cli(stack, "image", "inspect", "-f", "{{.Id}}", "busybox")).strip()
    conflict = cli(stack, "rmi", image_id.removeprefix("sha256:")[:12])
    assert conflict.returncode != 0 and "conflict" in conflict.stderr and "must be forced" in conflict.stderr
    assert "stopped container" in conflict.stderr
    by_name = cli(stack, "rmi", "busybox")
    assert by_name.returncode != 0 and "conflict" in by_name.stderr
    ok(cli(stack, "rm", "to-commit"))
    ok(cli(stack, "rmi", "committed:v1"))
