"""``docker cp`` of hostile archives into a running container writes nothing outside it: ``..``
names are refused; a symlink the archive plants pointing out (absolute or climbing) and then a
file written "through" it land inside the container's root, as Docker's chrooted untar places
them; a symlink the container itself made is followed within its root only; and a copy out of
the container carries its links to host paths as links, never the host files they name."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import uuid
from pathlib import Path

import docker
import pytest

from tests.e2e.stack import Stack

pytestmark = pytest.mark.skipif(shutil.which("docker") is None, reason="docker CLI not installed")


def _tar(*entries: tuple[str, str, bytes | str]) -> bytes:
    """(kind, name, data or link target) -> a tar in memory; kind: file, dir or symlink."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for kind, name, payload in entries:
            info = tarfile.TarInfo(name)
            info.mode = 0o644
            if kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, str(payload)
                tar.addfile(info)
            elif kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                data = payload if isinstance(payload, bytes) else payload.encode()
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _cli_cp(stack: Stack, archive: bytes, target: str) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ, DOCKER_HOST=stack.base_url, DOCKER_CONFIG=str(stack.prefix / "docker-config"))
    return subprocess.run(["docker", "cp", "-", target], input=archive, capture_output=True, timeout=60, env=env)


def _inside(container: docker.models.containers.Container, path: str) -> tuple[str, bytes]:
    """("file", its bytes) or ("symlink", its target) of a path in the container, read with docker cp
    (not exec: what is checked here is the files, not exec's output)."""
    stream, _ = container.get_archive(path)
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
        member = tar.getmembers()[0]
        if member.issym():
            return "symlink", member.linkname.encode()
        data = tar.extractfile(member)
        assert data is not None, member
        return "file", data.read()


def _run(container: docker.models.containers.Container, *argv: str) -> None:
    container.exec_run(list(argv))  # its effect is checked with docker cp, not its exit code


def _everything_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_hostile_archives_write_nothing_outside_a_running_container(
    stack: Stack, client: docker.DockerClient,
) -> None:
    canary = stack.prefix / f"canary-{uuid.uuid4().hex[:8]}"
    canary.mkdir()
    (canary / "keep").write_text("untouched")
    before = _everything_under(canary)
    container = client.containers.run("busybox", ["sleep", "300"], detach=True)
    try:
        container.reload()
        assert container.status == "running"
        # 1. `..` names: refused outright, Docker's 400 on the CLI's stderr, nothing written.
        dotdot = _tar(("file", "ok-before", "x"), ("file", f"../../../../../..{canary}/dotdot", "escaped"))
        result = _cli_cp(stack, dotdot, f"{container.id}:/tmp")
        assert result.returncode != 0 and b"climbs out of the root" in result.stderr, result.stderr
        with pytest.raises(docker.errors.NotFound):  # checked whole before the first entry is written
            container.get_archive("/tmp/ok-before")
        with pytest.raises(docker.errors.APIError) as refused:
            container.put_archive("/", _tar(("file", "../../../../etc/skiff-escape", "x")))
        assert refused.value.status_code == 400

        # 2. a symlink pointing out (absolute, and climbing with ..), then files written through it.
        climbing = "../" * 30 + str(canary).lstrip("/")
        planted = _tar(
            ("symlink", "abs", str(canary)),
            ("file", "abs/through-abs", "absolute"),
            ("symlink", "up", climbing),
            ("file", "up/through-up", "climbing"),
            ("symlink", "up/keep", "/etc/passwd"),  # replaces nothing outside: it lands inside too
        )
        result = _cli_cp(stack, planted, f"{container.id}:/tmp")
        assert result.returncode == 0, result.stderr
        assert container.put_archive("/", planted) is True
        assert _everything_under(canary) == before and (canary / "keep").read_text() == "untouched"
        # Inside the container, clamped at its root, as the container itself would see the links.
        assert _inside(container, f"{canary}/through-abs") == ("file", b"absolute")
        assert _inside(container, f"{canary}/through-up") == ("file", b"climbing")
        assert _inside(container, "/tmp/abs") == ("symlink", str(canary).encode())  # kept as data

        # 3. a symlink the running container made, pointing out of its root: followed within it.
        _run(container, "ln", "-s", "../../../../../../" + str(canary).lstrip("/"), "/exit")
        assert _inside(container, "/exit")[0] == "symlink"
        assert container.put_archive("/exit", _tar(("file", "via-container-link", "x"))) is True
        assert _everything_under(canary) == before
        assert _inside(container, f"{canary}/via-container-link") == ("file", b"x")

        # 4. out of the container: links to host paths are copied as links, never read through.
        _run(container, "ln", "-s", f"{canary}/keep", "/tmp/leak")
        assert _inside(container, "/tmp/leak") == ("symlink", f"{canary}/keep".encode())
        for source in ("/tmp/leak", "/tmp", "/"):
            stream, _ = container.get_archive(source)
            data = b"".join(stream)
            assert b"untouched" not in data, source
    finally:
        container.remove(force=True)
