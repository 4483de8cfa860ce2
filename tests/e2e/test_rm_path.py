"""docker run --rm's removal, in the order the daemon does it: the container is gone for every client
(inspect 404, name free) when the CLI's wait for "removed" returns; the record's folder follows in
the background, and the task, snapshot and network are already gone."""

from __future__ import annotations

from pathlib import Path

import docker
import pytest

from tests.e2e.stack import Stack
from tests.support.tasks import wait_for


def test_a_removed_rm_container_is_gone_and_its_folder_follows(stack: Stack, client: docker.DockerClient) -> None:
    api = client.api
    name = f"rm-path-{stack.prefix.name[-8:]}"
    box = api.create_container("busybox", ["true"], name=name,
                               host_config=api.create_host_config(auto_remove=True, network_mode="none"))
    folder = stack.paths.daemon_lib / "containers" / box["Id"]
    assert folder.is_dir()
    api.start(box)
    api.wait(box, condition="removed", timeout=30)
    with pytest.raises(docker.errors.NotFound):
        api.inspect_container(box["Id"])
    again = api.create_container("busybox", ["true"], name=name)  # the name is free at once
    api.remove_container(again)
    mounts = (stack.paths.highlevel_lib / "snapshots").as_posix()
    mountinfo = Path("/proc/self/mountinfo").read_text().splitlines()
    assert not any(box["Id"] in line and mounts in line for line in mountinfo)
    wait_for(lambda: not folder.exists(), 10, "the removed container's record folder")
    assert stack.shim_pids() == []  # the task went before the answer too
