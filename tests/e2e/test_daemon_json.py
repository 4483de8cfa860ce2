"""<etc>/daemon.json (services/common/daemon_config.py) against the whole stack: keys take effect (a runtime
added, default address pools, log-opts defaults), a bad file stops each service's start naming the key,
and SIGHUP reloads the reloadable keys (labels) while keeping the rest."""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from services.common.paths import resolve_paths
from tests.conftest import needs_root
from tests.e2e.stack import Stack, busybox_archive
from tests.support.tasks import wait_for

# runc under a name of its own (crun would do as well, but refuses this host's hybrid cgroup layout:
# "cgroups in hybrid mode not supported").
RUNC = shutil.which("runc") or "/usr/sbin/runc"


def write_config(prefix: Path, data: dict[str, Any]) -> Path:
    path = resolve_paths(prefix).etc / "daemon.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def free_base() -> str:
    """A /16 under 10.128/9 that overlaps nothing on the host (the pool new networks are cut from)."""
    from services.daemon.network.ipam import host_networks

    busy = host_networks()
    for _ in range(200):
        base = ipaddress.IPv4Network(f"10.{128 + secrets.randbelow(60)}.0.0/16")
        if not any(base.overlaps(b) for b in busy):
            return str(base)
    raise AssertionError("no free 10.x/16 for the address pool")


def cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DOCKER_HOST=stack.base_url, DOCKER_CONFIG=str(stack.prefix / "docker-config"))
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=60, env=env)


@pytest.fixture
def settings(prefix: Path) -> dict[str, Any]:
    return {
        "runtimes": {"runc-e2e": {"path": RUNC}},
        "default-address-pools": [{"base": free_base(), "size": 24}],
        "log-opts": {"max-size": "1m", "max-file": "2"},
        "labels": ["tier=e2e", "generation=1"],
        "default-ulimits": {"nofile": {"Name": "nofile", "Soft": 1111, "Hard": 2222}},
        "dns": ["192.0.2.53"],
        "mtu": 1400,
    }


@pytest.fixture
def configured(prefix: Path, settings: dict[str, Any], request: pytest.FixtureRequest,
               tmp_path: Path) -> Iterator[tuple[Stack, docker.DockerClient]]:
    """The stack started with ``settings`` as its daemon.json, busybox loaded."""
    needs_root()
    write_config(prefix, settings)
    stack: Stack = request.getfixturevalue("stack")
    client = docker.DockerClient(base_url=stack.base_url, timeout=30)
    with open(busybox_archive(tmp_path), "rb") as archive:
        client.images.load(archive.read())
    try:
        yield stack, client
    finally:
        client.close()


def test_runtime_added_and_used_with_docker_run(configured: tuple[Stack, docker.DockerClient]) -> None:
    stack, client = configured
    info = client.info()
    assert info["Runtimes"]["runc-e2e"] == {"path": RUNC}
    assert {"runc", "io.containerd.runc.v2"} <= set(info["Runtimes"]) and info["DefaultRuntime"] == "runc"
    said = cli(stack, "run", "--rm", "--runtime", "runc-e2e", "busybox", "echo", "from runc-e2e")
    assert said.returncode == 0 and said.stdout == "from runc-e2e\n", said.stderr
    done = cli(stack, "run", "-d", "--runtime", "runc-e2e", "busybox", "sleep", "60")
    assert done.returncode == 0, done.stderr
    cid = done.stdout.strip()
    try:
        assert client.api.inspect_container(cid)["HostConfig"]["Runtime"] == "runc-e2e"
        # runc itself holds the container: its own state, under the --root highlevel gives runtimes.
        listed = subprocess.run([RUNC, "--root", str(stack.paths.highlevel_run / "runtime-state"), "list", "-q"],
                                capture_output=True, text=True, timeout=30)
        assert cid in listed.stdout.split(), (listed.stdout, listed.stderr)
    finally:
        client.api.remove_container(cid, force=True)
    unknown = cli(stack, "run", "--rm", "--runtime", "nosuch", "busybox", "true")
    assert unknown.returncode != 0 and "Unknown runtime specified nosuch" in unknown.stderr


def test_new_network_subnet_from_default_address_pool(configured: tuple[Stack, docker.DockerClient],
                                                      settings: dict[str, Any]) -> None:
    _, client = configured
    base = ipaddress.IPv4Network(settings["default-address-pools"][0]["base"])
    assert client.info()["DefaultAddressPools"] == [{"Base": str(base), "Size": 24}]
    net = client.networks.create(f"pool-{secrets.token_hex(3)}")
    try:
        subnet = ipaddress.IPv4Network(net.attrs["IPAM"]["Config"][0]["Subnet"])
        assert subnet.subnet_of(base) and subnet.prefixlen == 24
    finally:
        net.remove()


def test_log_opts_defaults_applied(configured: tuple[Stack, docker.DockerClient]) -> None:
    _, client = configured
    plain = client.containers.create("busybox", ["true"])
    own = client.containers.create("busybox", ["true"], log_config={"type": "json-file", "config": {"max-size": "5m"}})
    other = client.containers.create("busybox", ["true"], log_config={"type": "local", "config": {}})
    try:
        assert plain.attrs["HostConfig"]["LogConfig"] == {"Type": "json-file",
                                                          "Config": {"max-size": "1m", "max-file": "2"}}
        # The container's own options win; the daemon's fill the rest (dockerd's mergeAndVerifyLogConfig).
        assert own.attrs["HostConfig"]["LogConfig"]["Config"] == {"max-size": "5m", "max-file": "2"}
        assert other.attrs["HostConfig"]["LogConfig"] == {"Type": "local", "Config": {}}
    finally:
        for c in (plain, own, other):
            c.remove(force=True)


def test_ulimits_dns_and_mtu_defaults(configured: tuple[Stack, docker.DockerClient]) -> None:
    _, client = configured
    shown = client.containers.run("busybox", ["sh", "-c", "ulimit -n; grep nameserver /etc/resolv.conf; "
                                              "cat /sys/class/net/eth0/mtu"], remove=True).decode().split("\n")
    # default-ulimits (soft shown by ulimit -n), dns (no --dns given), mtu (the default bridge).
    assert shown[:3] == ["1111", "nameserver 192.0.2.53", "1400"], shown
    own = client.containers.run("busybox", ["sh", "-c", "ulimit -n; grep nameserver /etc/resolv.conf"], remove=True,
                                ulimits=[docker.types.Ulimit(name="nofile", soft=333, hard=444)],
                                dns=["192.0.2.54"]).decode().split("\n")
    assert own[:2] == ["333", "nameserver 192.0.2.54"], own


def test_sighup_reloads_labels_and_keeps_the_rest(configured: tuple[Stack, docker.DockerClient],
                                                  settings: dict[str, Any]) -> None:
    stack, client = configured
    assert client.info()["Labels"] == ["tier=e2e", "generation=1"]
    daemon = stack.procs["services.daemon"]
    # labels reload; log-driver does not (dockerd's reload.go): it stays json-file until a restart.
    write_config(stack.prefix, {**settings, "labels": ["tier=e2e", "generation=2"], "log-driver": "local"})
    daemon.send_signal(signal.SIGHUP)
    wait_for(lambda: client.info()["Labels"] == ["tier=e2e", "generation=2"], 20, "labels reloaded")
    info = client.info()
    assert info["LoggingDriver"] == "json-file" and "runc-e2e" in info["Runtimes"]
    # A bad file on reload: logged, the configuration in force kept, the daemon serving on.
    write_config(stack.prefix, {**settings, "labels": ["generation=3"], "nosuchkey": 1})
    daemon.send_signal(signal.SIGHUP)
    log = stack.logs["services.daemon"]
    wait_for(lambda: "nosuchkey" in log.read_text(), 20, "the failed reload logged")
    assert daemon.poll() is None and client.info()["Labels"] == ["tier=e2e", "generation=2"]
    # The other services take SIGHUP as a reload too, not as the end.
    for module in ("services.highlevel", "services.apiserver"):
        stack.procs[module].send_signal(signal.SIGHUP)
    assert client.ping()
    assert all(p.poll() is None for p in stack.procs.values())


BAD = [
    ({"nosuchkey": 1, "labels": []}, "the following directives don't match any configuration option: nosuchkey"),
    ({"mtu": "1500"}, 'mtu: expected an integer of at least 68, got "1500"'),
    ({"default-address-pools": [{"base": "10.0.0.0/33", "size": 24}]}, "default-address-pools[0].base"),
    ({"default-runtime": "nosuch"}, "default-runtime: unknown runtime 'nosuch'"),
    ({"labels": ["novalue"]}, "labels: bad attribute format: novalue"),
    ({"hosts": ["tcp://127.0.0.1:notaport"]}, "hosts: invalid address"),
]


@pytest.mark.parametrize(("data", "message"), BAD, ids=[m.split(":")[0][:30] for _, m in BAD])
def test_bad_file_stops_every_service_with_the_key_named(prefix: Path, data: dict[str, Any], message: str) -> None:
    needs_root()
    path = write_config(prefix, data)
    for module in ("services.highlevel", "services.daemon", "services.apiserver"):
        done = subprocess.run([sys.executable, "-m", module, "--root", str(prefix)], capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 1, (module, done.stderr)
        assert f"unable to configure the Skiff daemon with file {path}:" in done.stderr and message in done.stderr, \
            (module, done.stderr)
    assert not resolve_paths(prefix).api_socket.exists()


def test_invalid_json_and_missing_named_file(prefix: Path) -> None:
    needs_root()
    path = resolve_paths(prefix).etc / "daemon.json"
    path.parent.mkdir(parents=True)
    path.write_text('{"labels": [')
    done = subprocess.run([sys.executable, "-m", "services.daemon", "--root", str(prefix)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1 and "invalid JSON" in done.stderr
    missing = prefix / "nosuch.json"
    done = subprocess.run([sys.executable, "-m", "services.apiserver", "--root", str(prefix), "--config-file",
                           str(missing)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and f"{missing}: no such file" in done.stderr
