"""An image's set-uid bits survive the unpack, as with Docker and containerd (critest's
"should allow privilege escalation when NoNewPrivs is false" failed while highlevel dropped them)."""

from __future__ import annotations

import tarfile
import uuid
from pathlib import Path

import docker

from tests.support.oci_image import Entry, build_image, busybox_layer, docker_save_archive, make_layer, tar_of_entries


def test_a_set_uid_file_keeps_its_bit(client: docker.DockerClient, tmp_path: Path) -> None:
    tag = f"setuid-{uuid.uuid4().hex[:8]}:latest"
    suid = make_layer(tar_of_entries([Entry("suid", data=b"#!/bin/sh\n", mode=0o4755),
                                      Entry("sgid", tarfile.REGTYPE, data=b"x", mode=0o2711)]))
    image = build_image([busybox_layer(tmp_path), suid])
    archive = docker_save_archive(image, tag, tmp_path / "setuid.tar")
    client.images.load(archive.read_bytes())
    try:
        out = client.containers.run(tag, ["stat", "-c", "%a %n", "/suid", "/sgid"], remove=True, network_mode="none")
        assert out.decode().split("\n")[:2] == ["4755 /suid", "2711 /sgid"]
    finally:
        client.images.remove(tag, force=True)
