"""docker-py against the whole stack: the Engine API as docker-py uses it."""

from __future__ import annotations

import time
from pathlib import Path

import docker
import docker.errors
import pytest
import requests

from tests.e2e.stack import Stack
from tests.support.tasks import wait_for


def test_ping_version_and_version_prefixes(stack: Stack) -> None:
    client = docker.DockerClient(base_url=stack.base_url, version="auto")
    assert client.ping() is True
    version = client.version()
    assert version["ApiVersion"] == "1.47" and version["MinAPIVersion"] == "1.24"
    api = client.api
    head = api.head(api.base_url + "/_ping")
    assert head.headers["Api-Version"] == "1.47" and head.headers["Ostype"] == "linux"
    assert "Docker-Experimental" in head.headers and head.headers["Server"].startswith("Skiff")
    too_new = api.get(api.base_url + "/v1.99/version")
    assert too_new.status_code == 400 and "too new" in too_new.json()["message"]
    too_old = api.get(api.base_url + "/v1.12/version")
    assert too_old.status_code == 400 and "too old" in too_old.json()["message"]
    assert api.get(api.base_url + "/version").json()["ApiVersion"] == "1.47"
    assert client.info()["OSType"] == "linux"


def test_run_remove_returns_output(client: docker.DockerClient) -> None:
    assert client.containers.run("busybox", "echo hi", remove=True) == b"hi\n"
    assert client.containers.list(all=True) == []


def test_run_detached_logs_wait_exit_code(client: docker.DockerClient) -> None:
    c = client.containers.run("busybox", ["sh", "-c", "echo out; echo err >&2; exit 3"], detach=True,
                              name="detached", labels={"team": "skiff"}, environment={"GREETING": "hello"})
    assert c.wait(timeout=30)["StatusCode"] == 3
    assert c.logs(stdout=True, stderr=False) == b"out\n"
    assert c.logs(stdout=False, stderr=True) == b"err\n"
    stamped = c.logs(timestamps=True, stderr=False).decode()
    assert stamped.endswith(" out\n") and stamped[:4].isdigit()
    c.reload()
    state = c.attrs["State"]
    assert state["Status"] == "exited" and state["ExitCode"] == 3 and state["Running"] is False
    assert state["StartedAt"] != "0001-01-01T00:00:00Z" and state["FinishedAt"] != "0001-01-01T00:00:00Z"


def test_env_workdir_user_and_follow(client: docker.DockerClient) -> None:
    out = client.containers.run("busybox", ["sh", "-c", "echo $GREETING; pwd; id -u"], remove=True,
                                environment={"GREETING": "hello"}, working_dir="/tmp", user="1000")
    assert out == b"hello\n/tmp\n1000\n"
    c = client.containers.run("busybox", ["sh", "-c", "for i in 1 2 3; do echo $i; sleep 0.1; done"], detach=True)
    assert b"".join(c.logs(stream=True, follow=True)) == b"1\n2\n3\n"
    assert c.wait(timeout=30)["StatusCode"] == 0
    assert c.logs(tail=1) == b"3\n"


def test_stop_kill_and_force_remove(client: docker.DockerClient) -> None:
    sleeper = client.containers.run("busybox", ["sleep", "300"], detach=True, name="sleeper")
    sleeper.reload()
    assert sleeper.status == "running" and sleeper.attrs["State"]["Pid"] > 0
    started = time.monotonic()
    sleeper.stop(timeout=1)  # sleep ignores nothing but is PID 1: SIGTERM is ignored, SIGKILL after 1 s
    assert time.monotonic() - started < 10
    sleeper.reload()
    assert sleeper.status == "exited" and sleeper.attrs["State"]["ExitCode"] == 137

    killed = client.containers.run("busybox", ["sleep", "300"], detach=True)
    killed.kill(signal="SIGKILL")
    assert killed.wait(timeout=30)["StatusCode"] == 137

    running = client.containers.run("busybox", ["sleep", "300"], detach=True, name="busy")
    with pytest.raises(docker.errors.APIError) as conflict:
        running.remove()
    assert conflict.value.response.status_code == 409
    running.remove(force=True)
    with pytest.raises(docker.errors.NotFound):
        client.containers.get("busy")


def test_list_filters_and_inspect_shape(client: docker.DockerClient) -> None:
    a = client.containers.run("busybox", ["sleep", "300"], detach=True, name="alpha", labels={"tier": "web"})
    b = client.containers.create("busybox", ["true"], name="beta", labels={"tier": "db"})
    assert [c.name for c in client.containers.list()] == ["alpha"]
    assert {c.name for c in client.containers.list(all=True)} == {"alpha", "beta"}
    assert [c.name for c in client.containers.list(all=True, filters={"name": "bet"})] == ["beta"]
    assert [c.name for c in client.containers.list(all=True, filters={"label": "tier=web"})] == ["alpha"]
    assert [c.name for c in client.containers.list(all=True, filters={"status": "created"})] == ["beta"]
    assert [c.name for c in client.containers.list(all=True, filters={"id": b.id[:10]})] == ["beta"]
    assert client.containers.get(a.id[:12]).id == a.id
    attrs = client.api.inspect_container("alpha")
    assert attrs["Id"] == a.id and attrs["Name"] == "/alpha" and len(attrs["Id"]) == 64
    assert attrs["Path"] == "sleep" and attrs["Args"] == ["300"]
    assert set(attrs["State"]) >= {"Status", "Running", "Pid", "ExitCode", "OOMKilled", "StartedAt", "FinishedAt"}
    assert attrs["Config"]["Labels"] == {"tier": "web"} and attrs["Config"]["Image"] == "busybox"
    assert attrs["HostConfig"]["NetworkMode"] == "bridge"  # the default network since bridges exist


def test_errors_not_found_and_duplicate_name(client: docker.DockerClient) -> None:
    with pytest.raises(docker.errors.NotFound):
        client.containers.get("no-such-container")
    client.containers.create("busybox", ["true"], name="twice")
    with pytest.raises(docker.errors.APIError) as dup:
        client.containers.create("busybox", ["true"], name="twice")
    assert dup.value.response.status_code == 409 and "already in use" in str(dup.value)
    with pytest.raises(docker.errors.ImageNotFound):
        client.containers.create("no-such-image:1", ["true"])
    bad = requests.Session()
    assert bad is not None


def test_host_network_and_limits(client: docker.DockerClient) -> None:
    limited = client.containers.run("busybox", ["sleep", "300"], detach=True, mem_limit="64m", pids_limit=50)
    # The container's cgroup, seen from the host (v1 or v2): under a "skiff" parent, named by the id.
    def limit(names: tuple[str, ...]) -> str:
        for path in Path("/sys/fs/cgroup").rglob(f"*{limited.id}*"):
            for name in names:
                if (path / name).exists():
                    assert "skiff" in str(path)
                    return (path / name).read_text().strip()
        raise AssertionError(f"no cgroup file {names} for {limited.id}")

    assert limit(("pids.max",)) == "50"
    assert limit(("memory.max", "memory.limit_in_bytes")) == str(64 * 1024 * 1024)
    limited.remove(force=True)
    host_links = client.containers.run("busybox", ["ls", "/sys/class/net"], remove=True, network_mode="host")
    none_links = client.containers.run("busybox", ["ls", "/sys/class/net"], remove=True, network_mode="none")
    assert none_links.split() == [b"lo"] and len(host_links.split()) >= len(none_links.split())
    ro = client.containers.run("busybox", ["sh", "-c", "touch /x 2>/dev/null; echo $?"], remove=True,
                               read_only=True)
    assert ro == b"1\n"


def test_auto_remove(client: docker.DockerClient) -> None:
    # Not containers.run(detach=True): it inspects after the start, and `true` may be gone by then.
    api = client.api
    cid = api.create_container("busybox", ["true"], host_config=api.create_host_config(auto_remove=True))["Id"]
    api.start(cid)
    # The low-level list: containers.list() inspects each entry after listing, and races the removal too.
    wait_for(lambda: not api.containers(all=True, filters={"id": cid}), 30, "auto-removed container")


def test_images_api(client: docker.DockerClient) -> None:
    images = client.images.list()
    assert any("busybox:latest" in i.tags for i in images)
    image = client.images.get("busybox")
    assert image.id.startswith("sha256:") and image.attrs["RootFS"]["Type"] == "layers"
    with pytest.raises(docker.errors.ImageNotFound):
        client.images.get("nothing-here:1")
