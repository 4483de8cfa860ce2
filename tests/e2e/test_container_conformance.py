"""Container options as dockerd 20.10 has them (issue 11): HostConfig's fields echoed by inspect and
honoured (PidMode, UTSMode, CgroupnsMode, VolumesFrom, Tmpfs, MemorySwap, MemorySwappiness,
DeviceCgroupRules, GroupAdd; StorageOpt refused as overlay without quota refuses it), container prune,
legacy links (variables, hosts entries, HostConfig.Links, removal), and commit with pause of a container
that has just exited. Through docker-py and, where installed, the real docker CLI."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import docker
import docker.errors
import pytest

from tests.e2e.stack import Stack
from tests.e2e.test_docker_cli import cli
from tests.support.tasks import wait_for

needs_cli = pytest.mark.skipif(shutil.which("docker") is None, reason="docker CLI not installed")
CGROUP_V2 = Path("/sys/fs/cgroup/cgroup.controllers").exists()


def _output(container: docker.models.containers.Container) -> str:
    container.wait(timeout=30)
    return container.logs().decode()


def _ns(pid: int | str, kind: str) -> str:
    return os.readlink(f"/proc/{pid}/ns/{kind}")


def _v1_cgroup_file(pid: int, controller: str, name: str) -> str:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            folder = next(p for p in Path("/sys/fs/cgroup").iterdir() if controller in p.name.split(","))
            return (folder / path.lstrip("/") / name).read_text()
    raise AssertionError(f"no {controller} cgroup for {pid}")


def test_inspect_host_config_echoes_dockerd_fields(client: docker.DockerClient) -> None:
    api = client.api
    plain = api.create_container("busybox", "true")
    host = api.inspect_container(plain)["HostConfig"]
    # dockerd 20.10's keys with its zero values (or the engine's defaults, filled in at create).
    assert host["VolumesFrom"] is None and host["DeviceCgroupRules"] is None and host["GroupAdd"] is None
    assert host["PidMode"] == "" and host["UTSMode"] == "" and host["Isolation"] == ""
    assert host["CgroupnsMode"] == ("private" if CGROUP_V2 else "host")
    assert host["Runtime"] == "runc" and host["VolumeDriver"] == ""
    assert host["MemorySwap"] == 0 and host["MemorySwappiness"] is None
    assert host["CpuRealtimeRuntime"] == 0 and host["CpuRealtimePeriod"] == 0
    assert host["Links"] is None and host["IpcMode"] == "private" and host["ShmSize"] == 64 * 1024 * 1024
    assert "Tmpfs" not in host and "StorageOpt" not in host

    given = api.create_host_config(
        cgroupns="private", device_cgroup_rules=["c 7:128 rwm"], pid_mode="host", isolation="default",
        tmpfs={"/scratch": "size=3M"}, uts_mode="host", mem_limit="64m", memswap_limit=-1, mem_swappiness=40,
        group_add=[1000, "daemon"])
    made = api.create_container("busybox", "true", host_config=given, runtime="runc")
    host = api.inspect_container(made)["HostConfig"]
    assert host["CgroupnsMode"] == "private" and host["DeviceCgroupRules"] == ["c 7:128 rwm"]
    assert host["PidMode"] == "host" and host["Isolation"] == "default" and host["UTSMode"] == "host"
    assert host["Tmpfs"] == {"/scratch": "size=3M"} and host["Runtime"] == "runc"
    assert host["MemorySwap"] == -1 and host["GroupAdd"] == ["1000", "daemon"]
    assert host["MemorySwappiness"] == (None if CGROUP_V2 else 40)  # v2 has no swappiness: dockerd drops it
    driver = client.containers.create("busybox", "true", volume_driver="foo")
    assert driver.attrs["HostConfig"]["VolumeDriver"] == "foo"

    refusals = [
        ({"isolation": "hyperv"}, 400, "Invalid isolation"),
        ({"cgroupns": "shared"}, 400, "invalid cgroup namespace mode"),
        ({"pid_mode": "nope"}, 400, "invalid PID mode"),
        ({"device_cgroup_rules": ["x 1:1 rwm"]}, 400, "invalid device cgroup rule format"),
        ({"mem_limit": "64m", "memswap_limit": "32m"}, 400, "Minimum memoryswap limit"),
        ({"memswap_limit": "64m"}, 400, "always set the Memory limit"),
        ({"mem_swappiness": 101}, 400, "valid memory swappiness range is 0-100"),
        ({"storage_opt": {"size": "120G"}}, 500, "--storage-opt is supported only for overlay over xfs"),
        ({"storage_opt": {"foo": "bar"}}, 500, "Unknown option foo"),
    ]
    for options, status, message in refusals:
        with pytest.raises(docker.errors.APIError) as caught:
            api.create_container("busybox", "true", host_config=api.create_host_config(**options))
        assert caught.value.status_code == status and message in str(caught.value.explanation), options
    with pytest.raises(docker.errors.APIError) as caught:
        api.create_container("busybox", "true", host_config=api.create_host_config(runtime="crun"))
    assert caught.value.status_code == 400 and "Unknown runtime specified crun" in str(caught.value.explanation)
    with pytest.raises(docker.errors.APIError) as caught:
        api.create_container("busybox", "true", hostname="h", host_config=api.create_host_config(uts_mode="host"))
    assert "conflicting options: hostname and the UTS mode" in str(caught.value.explanation)


def test_namespace_modes_honoured(client: docker.DockerClient) -> None:
    me = os.getpid()
    host_pid = client.containers.run("busybox", ["readlink", "/proc/self/ns/pid"], pid_mode="host", detach=True)
    assert _output(host_pid).strip() == _ns(me, "pid")
    host_uts = client.containers.run("busybox", "hostname", uts_mode="host", detach=True)
    assert _output(host_uts).strip() == socket.gethostname()
    own_uts = client.containers.run("busybox", "hostname", detach=True)
    assert _output(own_uts).strip() == own_uts.id[:12]

    first = client.containers.run("busybox", ["sleep", "300"], detach=True)
    joined = client.containers.run("busybox", ["sh", "-c", "cat /proc/1/cmdline | tr '\\0' ' '"],
                                   pid_mode=f"container:{first.id}", detach=True)
    assert _output(joined).strip() == "sleep 300"  # the first container's init is its pid 1
    stopped = client.containers.create("busybox", "true")
    late = client.containers.create("busybox", "true", pid_mode=f"container:{stopped.id}")
    with pytest.raises(docker.errors.APIError) as caught:
        late.start()
    assert caught.value.status_code == 409 and "is not running" in str(caught.value.explanation)

    private = client.containers.run("busybox", ["sleep", "300"], cgroupns="private", detach=True)
    shared = client.containers.run("busybox", ["sleep", "300"], cgroupns="host", detach=True)
    pid_of = {c.id: client.api.inspect_container(c.id)["State"]["Pid"] for c in (private, shared)}
    assert _ns(pid_of[private.id], "cgroup") != _ns(me, "cgroup")
    assert _ns(pid_of[shared.id], "cgroup") == _ns(me, "cgroup")


def test_ipc_shm_and_oom_options(client: docker.DockerClient) -> None:
    api = client.api
    me = os.getpid()
    shm = client.containers.run("busybox", ["sh", "-c", "grep ' /dev/shm ' /proc/mounts; cat /proc/self/oom_score_adj"],
                                shm_size="128m", oom_score_adj=500, detach=True)
    mount, adj = _output(shm).splitlines()
    assert "size=131072k" in mount and adj == "500"
    shown = api.inspect_container(shm.id)["HostConfig"]
    assert shown["ShmSize"] == 128 * 1024 * 1024 and shown["OomScoreAdj"] == 500 and shown["IpcMode"] == "private"
    host_ipc = client.containers.run("busybox", ["readlink", "/proc/self/ns/ipc"], ipc_mode="host", detach=True)
    assert _output(host_ipc).strip() == _ns(me, "ipc")

    donor = client.containers.run("busybox", ["sleep", "300"], ipc_mode="shareable", detach=True)
    joiner = client.containers.run("busybox", ["sleep", "300"], ipc_mode=f"container:{donor.id}", detach=True)
    pids = [api.inspect_container(c.id)["State"]["Pid"] for c in (donor, joiner)]
    assert _ns(pids[0], "ipc") == _ns(pids[1], "ipc") != _ns(me, "ipc")
    private = client.containers.run("busybox", ["sleep", "300"], detach=True)
    refused = client.containers.create("busybox", "true", ipc_mode=f"container:{private.id}")
    with pytest.raises(docker.errors.APIError) as caught:
        refused.start()
    assert caught.value.status_code == 409 and "non-shareable IPC" in str(caught.value.explanation)

    if not CGROUP_V2:
        soft = client.containers.run("busybox", ["sleep", "300"], mem_reservation="16m", oom_kill_disable=True,
                                     detach=True)
        pid = api.inspect_container(soft.id)["State"]["Pid"]
        assert _v1_cgroup_file(pid, "memory", "memory.soft_limit_in_bytes").strip() == str(16 * 1024 * 1024)
        assert "oom_kill_disable 1" in _v1_cgroup_file(pid, "memory", "memory.oom_control")
        shown = api.inspect_container(soft.id)["HostConfig"]
        assert shown["MemoryReservation"] == 16 * 1024 * 1024 and shown["OomKillDisable"] is True


def test_devices(client: docker.DockerClient) -> None:
    # /dev/fuse is outside the default device rules: "r" lets the container open it for reading only.
    script = ("ls -l /dev/myfuse /dev/myzero | cut -c1-1; head -c 3 /dev/myzero | wc -c; "
              "(echo x > /dev/myfuse) 2>&1 | grep -o 'not permitted'")
    box = client.containers.run("busybox", ["sh", "-c", script], detach=True,
                                devices=["/dev/fuse:/dev/myfuse:r", "/dev/zero:/dev/myzero"])
    assert _output(box).splitlines() == ["c", "c", "3", "not permitted"]
    assert client.api.inspect_container(box.id)["HostConfig"]["Devices"] == [
        {"PathOnHost": "/dev/fuse", "PathInContainer": "/dev/myfuse", "CgroupPermissions": "r"},
        {"PathOnHost": "/dev/zero", "PathInContainer": "/dev/myzero", "CgroupPermissions": "rwm"}]
    with pytest.raises(docker.errors.APIError) as caught:
        client.containers.create("busybox", "true", devices=["/dev/no-such-device"])
    assert "error gathering device information while adding custom device" in str(caught.value.explanation)


@pytest.mark.skipif(CGROUP_V2, reason="swappiness and the devices list are cgroup v1 files")
def test_memory_swap_swappiness_and_device_rules_in_cgroups(client: docker.DockerClient) -> None:
    api = client.api
    made = api.create_container("busybox", ["sleep", "300"], host_config=api.create_host_config(
        mem_limit="64m", memswap_limit="128m", mem_swappiness=40, device_cgroup_rules=["c 7:128 rwm"]))
    swap_limit = Path("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists()
    if not swap_limit:
        # dockerd's answer on a kernel without swap accounting: a warning, and the limit dropped.
        assert any("does not support swap limit" in w for w in made["Warnings"] or []), made
    api.start(made)
    pid = api.inspect_container(made)["State"]["Pid"]
    assert _v1_cgroup_file(pid, "memory", "memory.swappiness").strip() == "40"
    assert _v1_cgroup_file(pid, "memory", "memory.limit_in_bytes").strip() == str(64 * 1024 * 1024)
    if swap_limit:
        assert _v1_cgroup_file(pid, "memory", "memory.memsw.limit_in_bytes").strip() == str(128 * 1024 * 1024)
    else:
        assert api.inspect_container(made)["HostConfig"]["MemorySwap"] == -1
    assert "c 7:128 rwm" in _v1_cgroup_file(pid, "devices", "devices.list").splitlines()


def test_volumes_from_and_tmpfs(client: docker.DockerClient, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    # Its anonymous volume /data (Config.Volumes) and its bind /host come along; :ro makes both read-only.
    owner = client.api.create_container("busybox", ["sh", "-c", "echo vol > /data/f; echo bind > /host/f"],
                                        volumes=["/data"], host_config=client.api.create_host_config(
                                            binds={str(shared): {"bind": "/host", "mode": "rw"}}))
    client.api.start(owner)
    client.api.wait(owner, timeout=30)
    script = "cat /data/f /host/f; for d in /data /host; do touch $d/x 2>/dev/null || echo ro; done"
    reader = client.containers.run("busybox", ["sh", "-c", script], volumes_from=[f"{owner['Id']}:ro"],
                                   detach=True)
    assert _output(reader).splitlines() == ["vol", "bind", "ro", "ro"]
    assert reader.attrs["HostConfig"]["VolumesFrom"] == [f"{owner['Id']}:ro"]
    writer = client.containers.run("busybox", ["sh", "-c", "echo more > /data/g"], volumes_from=[owner["Id"]],
                                   detach=True)
    writer.wait(timeout=30)
    volume = next(m for m in client.api.inspect_container(owner)["Mounts"] if m["Destination"] == "/data")
    assert Path(volume["Source"], "g").read_text() == "more\n"
    assert {m["Destination"] for m in client.api.inspect_container(writer.id)["Mounts"]} == {"/data", "/host"}
    # A bind of its own wins over the borrowed one at the same place (dockerd's order).
    own = tmp_path / "own"
    own.mkdir()
    (own / "f").write_text("own\n")
    over = client.containers.run("busybox", ["cat", "/host/f"], volumes_from=[owner["Id"]],
                                 volumes={str(own): {"bind": "/host", "mode": "ro"}}, detach=True)
    assert _output(over) == "own\n"
    with pytest.raises(docker.errors.NotFound):
        client.containers.create("busybox", "true", volumes_from=["no-such-container"])

    tmpfs = client.containers.run("busybox", ["grep", " /scratch ", "/proc/mounts"],
                                  tmpfs={"/scratch": "size=1m,exec"}, detach=True)
    line = _output(tmpfs).split()
    assert line[2] == "tmpfs" and "size=1024k" in line[3] and "noexec" not in line[3], line
    assert tmpfs.attrs["HostConfig"]["Tmpfs"] == {"/scratch": "size=1m,exec"}


def test_group_add_applied(client: docker.DockerClient) -> None:
    by_number = client.containers.run("busybox", ["id", "-G"], group_add=[1000, 1001], detach=True)
    assert _output(by_number).split() == ["0", "1000", "1001"]
    # Its own gid, the groups /etc/group lists it in (users), and GroupAdd's by name (the kernel sorts them).
    by_name = client.containers.run("busybox", ["id", "-G"], group_add=["daemon"], user="skiff", detach=True)
    assert _output(by_name).split() == ["1000", "1", "100"]
    # The spec a create builds to check its settings finds it already (dockerd only at the start).
    with pytest.raises(docker.errors.APIError) as caught:
        client.containers.create("busybox", ["id", "-G"], group_add=["nosuchgroup"])
    assert caught.value.status_code == 400 and "Unable to find group nosuchgroup" in str(caught.value.explanation)


@needs_cli
def test_group_add_cli(stack: Stack, client: docker.DockerClient) -> None:
    run = cli(stack, "run", "--rm", "--group-add", "daemon", "--group-add", "4242", "busybox", "id", "-G")
    assert run.returncode == 0 and run.stdout.split() == ["0", "1", "4242"], run.stderr


def test_container_prune(client: docker.DockerClient) -> None:
    api = client.api
    wrote = api.create_container("busybox", ["sh", "-c", "echo hello > /data.txt"])
    running = api.create_container("busybox", ["sleep", "300"])
    labelled = api.create_container("busybox", "true", labels={"keep": "yes"})
    api.start(wrote)
    api.start(running)
    api.wait(wrote, timeout=30)
    with pytest.raises(docker.errors.APIError) as caught:
        api.prune_containers(filters={"status": "exited"})
    assert caught.value.status_code == 400 and "Invalid filter 'status'" in str(caught.value.explanation)
    assert api.prune_containers(filters={"until": "2000-01-01T00:00:00Z"}) == \
        {"ContainersDeleted": None, "SpaceReclaimed": 0}
    result = api.prune_containers(filters={"label!": "keep=yes"})
    assert result["ContainersDeleted"] == [wrote["Id"]] and result["SpaceReclaimed"] > 0
    result = api.prune_containers(filters={"label": "keep"})
    assert result["ContainersDeleted"] == [labelled["Id"]]
    assert [c["Id"] for c in api.containers(all=True)] == [running["Id"]]


@needs_cli
def test_container_prune_cli(stack: Stack, client: docker.DockerClient) -> None:
    done = cli(stack, "run", "--label", "tier=old", "busybox", "true")
    assert done.returncode == 0, done.stderr
    kept = cli(stack, "create", "busybox", "true")
    assert kept.returncode == 0, kept.stderr
    pruned = cli(stack, "container", "prune", "-f", "--filter", "label=tier=old")
    assert pruned.returncode == 0, pruned.stderr
    assert "Deleted Containers:" in pruned.stdout and "Total reclaimed space:" in pruned.stdout
    assert [c.id for c in client.containers.list(all=True)] == [kept.stdout.strip()]


def test_legacy_links(client: docker.DockerClient) -> None:
    api = client.api
    child = client.containers.run("busybox", ["sleep", "300"], name="db-server", environment={"FOO": "1"},
                                  ports={"5432/tcp": None}, detach=True)
    child_ip = api.inspect_container(child.id)["NetworkSettings"]["Networks"]["bridge"]["IPAddress"]
    script = "env | sort; echo ---; cat /etc/hosts"
    parent = client.containers.run("busybox", ["sh", "-c", f"{script}; sleep 300"], name="web",
                                   links={"db-server": "my-db"}, detach=True)

    def printed() -> str:
        text = parent.logs().decode()
        return text if "---" in text and child_ip in text else ""

    out = wait_for(printed, what="the linking container's output")
    env = out.split("---")[0].splitlines()
    for line in ("MY_DB_NAME=/web/my-db", "MY_DB_ENV_FOO=1", f"MY_DB_PORT=tcp://{child_ip}:5432",
                 f"MY_DB_PORT_5432_TCP=tcp://{child_ip}:5432", f"MY_DB_PORT_5432_TCP_ADDR={child_ip}",
                 "MY_DB_PORT_5432_TCP_PORT=5432", "MY_DB_PORT_5432_TCP_PROTO=tcp"):
        assert line in env, (line, env)
    assert not any(line.startswith("MY_DB_ENV_PATH=") for line in env)
    hosts = [line.split() for line in out.split("---")[1].splitlines()]
    assert [child_ip, "my-db", child.id[:12], "db-server"] in hosts, hosts
    assert api.inspect_container(parent.id)["HostConfig"]["Links"] == ["/db-server:/web/my-db"]
    names = {c["Id"]: c["Names"] for c in api.containers(all=True)}
    assert names[child.id] == ["/db-server", "/web/my-db"] and names[parent.id] == ["/web"]

    # The child back on the bridge at another address: the parent's hosts entry follows it.
    child.stop(timeout=0)
    filler = client.containers.run("busybox", ["sleep", "300"], detach=True)
    child.start()
    new_ip = api.inspect_container(child.id)["NetworkSettings"]["Networks"]["bridge"]["IPAddress"]
    assert new_ip != child_ip
    hosts_path = Path(api.inspect_container(parent.id)["HostsPath"])
    wait_for(lambda: f"{new_ip}\tmy-db " in hosts_path.read_text(), what="the parent's hosts entry moved")
    filler.remove(force=True)

    api.remove_container("web/my-db", link=True)
    assert api.inspect_container(parent.id)["HostConfig"]["Links"] is None
    assert {c["Id"]: c["Names"] for c in api.containers(all=True)}[child.id] == ["/db-server"]
    assert {c["Id"] for c in api.containers(all=True)} == {child.id, parent.id}
    with pytest.raises(docker.errors.NotFound):
        api.remove_container("web/my-db", link=True)

    with pytest.raises(docker.errors.APIError) as caught:
        client.containers.create("busybox", "true", links={"no-such": "x"})
    assert caught.value.status_code == 400 and "could not get container for no-such" in str(caught.value.explanation)
    child.stop(timeout=0)
    late = client.containers.create("busybox", "env", links={"db-server": "db"})
    with pytest.raises(docker.errors.APIError) as caught:
        late.start()
    assert "Cannot link to a non running container: /db-server AS /" in str(caught.value.explanation)


@needs_cli
def test_legacy_links_cli(stack: Stack, client: docker.DockerClient) -> None:
    assert cli(stack, "run", "-d", "--name", "cache", "-e", "MODE=x", "busybox", "sleep", "300").returncode == 0
    run = cli(stack, "run", "--name", "app", "--link", "cache:kv", "busybox", "sh", "-c",
              "echo $KV_NAME $KV_ENV_MODE; grep -c kv /etc/hosts")
    assert run.returncode == 0 and run.stdout.split() == ["/app/kv", "x", "1"], run.stdout + run.stderr
    shown = cli(stack, "inspect", "-f", "{{json .HostConfig.Links}}", "app")
    assert shown.stdout.strip() == '["/cache:/app/kv"]', shown.stderr


def test_commit_with_pause_of_a_container_that_just_exited(client: docker.DockerClient) -> None:
    """docker-py's commit test commits right after a short run: whether or not the exit has been recorded,
    a pause=true commit of a container that is no longer running commits it as it is."""
    for i in range(5):
        box = client.containers.run("busybox", ["touch", f"/test{i}"], detach=True)
        image = client.api.commit(box.id, repository="committed", tag=str(i), pause=True)
        assert image["Id"].startswith("sha256:")
        box.wait(timeout=30)
        box.remove()
        client.images.remove(image["Id"])
