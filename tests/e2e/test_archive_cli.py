"""docker cp both ways, docker export, docker diff and system df through the CLI and docker-py."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import docker
import pytest

from tests.e2e.stack import Stack
from tests.e2e.test_docker_cli import cli
from tests.e2e.test_volumes_cli import ok

needs_cli = pytest.mark.skipif(shutil.which("docker") is None, reason="docker CLI not installed")


@needs_cli
def test_cli_cp_export_diff(stack: Stack, client: docker.DockerClient, tmp_path: Path) -> None:
    ok(stack, "run", "-d", "--name", "box", "-v", "cpvol:/vol", "busybox", "sleep", "300")
    src = tmp_path / "up.txt"
    src.write_text("uploaded\n")
    ok(stack, "cp", str(src), "box:/tmp/")
    ok(stack, "cp", str(src), "box:/vol/in-volume.txt")
    assert ok(stack, "exec", "box", "cat", "/tmp/up.txt") == "uploaded\n"
    assert (stack.paths.daemon_lib / "volumes" / "cpvol" / "_data" / "in-volume.txt").read_text() == "uploaded\n"
    ok(stack, "exec", "box", "sh", "-c", "mkdir -p /srv/d && echo down > /srv/d/f && rm /bin/true")
    ok(stack, "cp", "box:/srv/d", str(tmp_path / "got"))
    assert (tmp_path / "got" / "f").read_text() == "down\n"
    missing = cli(stack, "cp", "box:/no/such", str(tmp_path / "x"))
    assert missing.returncode != 0 and "Could not find the file /no/such" in missing.stderr
    changes = {line for line in ok(stack, "diff", "box").splitlines()}
    assert {"A /srv", "A /srv/d", "A /srv/d/f", "D /bin/true", "A /tmp/up.txt"} <= changes, changes
    env = dict(DOCKER_HOST=stack.base_url)
    exported = subprocess.run(["docker", "export", "box"], capture_output=True, timeout=60,
                              env={**env, "PATH": "/usr/bin:/bin:/usr/local/bin"})
    assert exported.returncode == 0, exported.stderr
    with tarfile.open(fileobj=io.BytesIO(exported.stdout)) as tar:
        names = tar.getnames()
    assert any(n.endswith("srv/d/f") for n in names) and any(n.endswith("bin/busybox") for n in names)
    lines = ok(stack, "system", "df", "--format", "{{json .}}").splitlines()
    rows = {row["Type"]: row for row in map(json.loads, lines)}
    assert rows["Local Volumes"]["TotalCount"] == "1" and rows["Containers"]["Active"] == "1"
    ok(stack, "rm", "-f", "box")
    ok(stack, "volume", "rm", "cpvol")


def test_docker_py_archive_and_volumes(stack: Stack, client: docker.DockerClient) -> None:
    volume = client.volumes.create("pyvol", labels={"a": "b"})
    assert client.volumes.get("pyvol").attrs["Labels"] == {"a": "b"}
    container = client.containers.create("busybox", ["sleep", "300"], volumes={"pyvol": {"bind": "/v"}},
                                         tmpfs={"/run/x": "size=64k"})
    try:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            data = b"hello\n"
            info = tarfile.TarInfo("greeting")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            evil = tarfile.TarInfo("../../escape")
            evil.size = 0
        assert container.put_archive("/v", buf.getvalue())
        stream, stat = container.get_archive("/v/greeting")
        assert stat["name"] == "greeting" and stat["size"] == 6
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as member:
            assert member.extractfile("greeting").read() == b"hello\n"  # type: ignore[union-attr]
        with pytest.raises(docker.errors.NotFound):
            container.get_archive("/nope")
        # A tar that climbs out of its target is refused and writes nothing outside the rootfs.
        bad = io.BytesIO()
        with tarfile.open(fileobj=bad, mode="w") as tar:
            tar.addfile(evil, io.BytesIO(b""))
        with pytest.raises(docker.errors.APIError) as refused:
            container.put_archive("/", bad.getvalue())
        assert refused.value.status_code == 400
        assert not (stack.prefix / "escape").exists()
        with pytest.raises(docker.errors.APIError) as busy:
            volume.remove()
        assert busy.value.status_code == 409
        mounts = {m["Destination"]: m["Type"] for m in client.api.inspect_container(container.id)["Mounts"]}
        assert mounts == {"/v": "volume"}  # dockerd lists no HostConfig.Tmpfs mount (only --mount type=tmpfs)
    finally:
        container.remove(force=True)
    volume.remove()
    assert client.volumes.prune()["VolumesDeleted"] is None
    anon = client.volumes.create()
    assert anon.name in (client.volumes.prune(filters={"all": "true"})["VolumesDeleted"] or [])
