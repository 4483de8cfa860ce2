"""daemon.json's registry keys against the whole stack and Debian's docker-registry, as dockerd has them:

- ``registry-mirrors``: a Docker Hub name (``busybox:latest``) is pulled from a loopback mirror, the
  mirrors tried in order (a dead one first) with no route to docker.io needed; SIGHUP takes them away
  and back (then the Hub itself is tried, and its failure names every host tried); a build's FROM
  pulls through them too.
- ``insecure-registries``: a registry on a non-loopback local address serving plain http is refused
  with dockerd's words until it is listed (SIGHUP); listed, one serving TLS with a certificate no one
  trusts is pulled from too (verification skipped). ``docker info`` shows what is in force.
- ``max-concurrent-downloads``: a counting proxy in front of the registry holds each layer's download
  until as many as the setting allows are in flight at once (so the pull must fetch that many
  concurrently), and records the most ever in flight; SIGHUP raises the cap for the next pull.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import pytest
from aiohttp import ClientSession, web

from services.common.paths import resolve_paths
from tests.conftest import needs_root
from tests.e2e.stack import Stack, busybox_archive
from tests.support.oci_image import Entry, build_image, docker_save_archive, make_layer, tar_of_entries
from tests.support.registry import REGISTRY_BIN, RunningRegistry, free_port, run_registry
from tests.support.tasks import wait_for

pytestmark = [
    pytest.mark.skipif(shutil.which("docker") is None, reason="docker CLI not installed"),
    pytest.mark.skipif(not REGISTRY_BIN.exists(), reason="docker-registry not installed"),
]


def write_config(prefix: Path, data: dict[str, Any]) -> None:
    path = resolve_paths(prefix).etc / "daemon.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def cli(stack: Stack, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DOCKER_HOST=stack.base_url, DOCKER_CONFIG=str(stack.prefix / "docker-config"),
               DOCKER_BUILDKIT="0")
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, env=env)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args}: {result.stderr}"
    return result.stdout


def reload(stack: Stack, client: docker.DockerClient, data: dict[str, Any], shown: Any) -> None:
    """daemon.json rewritten and the daemon sent SIGHUP; waits until ``shown(info)`` holds."""
    write_config(stack.prefix, data)
    stack.procs["services.daemon"].send_signal(signal.SIGHUP)
    wait_for(lambda: shown(client.info()), 20, "the reloaded daemon.json in docker info")


def start(request: pytest.FixtureRequest, data: dict[str, Any]) -> tuple[Stack, docker.DockerClient]:
    """The stack started with ``data`` as its daemon.json, busybox loaded."""
    needs_root()
    write_config(request.getfixturevalue("prefix"), data)
    stack: Stack = request.getfixturevalue("stack")
    client = docker.DockerClient(base_url=stack.base_url, timeout=60)
    request.addfinalizer(client.close)
    with open(busybox_archive(request.getfixturevalue("tmp_path")), "rb") as archive:
        client.images.load(archive.read())
    return stack, client


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[RunningRegistry]:
    with run_registry(tmp_path / "registry") as reg:
        yield reg


def local_address() -> str:
    """A non-loopback IPv4 address of this host (the registry listens there: traffic stays on the host)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        # The default route's link first: a bridge of another test may go away meanwhile.
        links = [r.get_attr("RTA_OIF") for r in ipr.get_default_routes(family=socket.AF_INET)]
        for msg in sorted(ipr.get_addr(family=socket.AF_INET), key=lambda m: m["index"] not in links):
            address = msg.get_attr("IFA_ADDRESS")
            if address and not address.startswith("127."):
                return str(address)
    pytest.skip("no non-loopback IPv4 address on this host")


def seed(stack: Stack, server: str, repo: str, source: str = "busybox") -> str:
    """``source`` pushed to ``server/repo`` through Skiff (plain http on loopback), the local tag removed."""
    name = f"{server}/{repo}"
    ok(cli(stack, "tag", source, name))
    ok(cli(stack, "push", name))
    ok(cli(stack, "rmi", name))
    return name


def dead_port() -> int:
    return free_port()  # nothing listens there: connection refused


# -- registry-mirrors --------------------------------------------------------------------------------------


def test_hub_pull_through_mirrors_in_order_and_reloaded(request: pytest.FixtureRequest,
                                                         registry: RunningRegistry) -> None:
    stack, client = start(request, {})
    mirror = f"http://{registry.host}:{registry.port}"
    dead = f"http://127.0.0.1:{dead_port()}"
    image_id = client.images.get("busybox").id
    seed(stack, f"{registry.host}:{registry.port}", "library/busybox:latest")
    ok(cli(stack, "rmi", "busybox:latest"))

    reload(stack, client, {"registry-mirrors": [dead, mirror]},
           lambda info: info["RegistryConfig"]["Mirrors"] == [dead + "/", mirror + "/"])
    assert client.info()["RegistryConfig"]["IndexConfigs"]["docker.io"]["Mirrors"] == [dead + "/", mirror + "/"]
    pulled = ok(cli(stack, "pull", "busybox:latest"))
    assert "Status: Downloaded newer image for busybox:latest" in pulled, pulled
    assert client.images.get("busybox:latest").id == image_id
    assert ok(cli(stack, "run", "--rm", "busybox", "echo", "from-mirror")) == "from-mirror\n"

    # Mirrors taken away (SIGHUP): the Hub itself is asked, and this machine has no route to it.
    ok(cli(stack, "rmi", "busybox:latest"))
    reload(stack, client, {}, lambda info: info["RegistryConfig"]["Mirrors"] == [])
    refused = cli(stack, "pull", "library/busybox")
    assert refused.returncode != 0 and "registry-1.docker.io" in refused.stderr, refused.stderr
    assert mirror not in refused.stderr

    # A mirror that lacks the image: the Hub is tried next, and the error names both.
    reload(stack, client, {"registry-mirrors": [mirror]}, lambda info: info["RegistryConfig"]["Mirrors"])
    missing = cli(stack, "pull", "library/notthere:v1")
    assert missing.returncode != 0, missing.stderr
    assert "registry-1.docker.io" in missing.stderr and f"{mirror}: GET {mirror}/v2/library/notthere" in \
        missing.stderr, missing.stderr
    # And back: the mirror serves the Hub's name again, to a pull and to a build's FROM.
    ok(cli(stack, "pull", "busybox"))
    assert client.images.get("busybox:latest").id == image_id
    ok(cli(stack, "rmi", "busybox:latest"))
    context = stack.prefix / "build-context"
    context.mkdir()
    (context / "Dockerfile").write_text("FROM busybox\nLABEL from=mirror\n")
    ok(cli(stack, "build", "-t", "frommirror:v1", str(context)))
    assert client.images.get("busybox:latest").id == image_id
    assert client.images.get("frommirror:v1").labels == {"from": "mirror"}


# -- insecure-registries -----------------------------------------------------------------------------------


def test_insecure_registries(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    stack, client = start(request, {})
    address = local_address()
    with run_registry(tmp_path / "plain", host=address) as plain, \
            run_registry(tmp_path / "tls", host=address, tls=True) as tls:
        plain_server, tls_server = f"{address}:{plain.port}", f"{address}:{tls.port}"
        name = f"{plain_server}/plain/bb:v1"
        ok(cli(stack, "tag", "busybox", name))
        refused = cli(stack, "push", name)
        expected = f'"https://{plain_server}/v2/plain/bb/'
        said = "http: server gave HTTP response to HTTPS client"
        assert refused.returncode != 0 and expected in refused.stderr and said in refused.stderr, refused
        refused = cli(stack, "pull", name)
        assert refused.returncode != 0 and f'Get {expected}manifests/v1": {said}' in refused.stderr, refused.stderr
        assert "insecure-registries" in refused.stderr
        tls_name = f"{tls_server}/tls/bb:v1"
        ok(cli(stack, "tag", "busybox", tls_name))
        untrusted = cli(stack, "push", tls_name)
        assert untrusted.returncode != 0 and "x509: certificate signed by unknown authority" in \
            untrusted.stdout + untrusted.stderr, untrusted

        # Listed (one by host:port, one by CIDR) and reloaded: plain http allowed, the certificate not checked.
        cidr = f"{address}/32"
        reload(stack, client, {"insecure-registries": [plain_server, cidr]},
               lambda info: cidr in info["RegistryConfig"]["InsecureRegistryCIDRs"])
        config = client.info()["RegistryConfig"]
        assert config["IndexConfigs"][plain_server] == {"Name": plain_server, "Mirrors": [], "Secure": False,
                                                        "Official": False}
        assert "127.0.0.0/8" in config["InsecureRegistryCIDRs"]
        for each in (name, tls_name):
            ok(cli(stack, "push", each))
            ok(cli(stack, "rmi", each))
            ok(cli(stack, "pull", each))
            assert client.images.get(each).id == client.images.get("busybox").id
        # The TLS one was reached over TLS (its log shows the requests; the plain one has no TLS at all).
        assert tls.ca is not None


# -- max-concurrent-downloads ------------------------------------------------------------------------------


@dataclass
class Gate:
    """Holds each download of the ``layers`` until ``cap`` downloads are in flight at once (or every layer
    has started): a pull that fetches fewer at once never gets past it (``timed_out``)."""

    layers: set[str]
    cap: int
    deadline: float = 60.0
    in_flight: int = 0
    most: int = 0
    started: int = 0
    done: int = 0
    generation: int = 0  # bumped when the held group is let go
    timed_out: bool = False
    cond: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def enter(self) -> None:
        async with self.cond:
            self.in_flight += 1
            self.started += 1
            self.most = max(self.most, self.in_flight)
            mine = self.generation
            if self.in_flight < self.cap and self.started < len(self.layers):
                try:
                    await asyncio.wait_for(self.cond.wait_for(lambda: self.generation != mine), self.deadline)
                except TimeoutError:
                    self.timed_out = True
            if self.generation == mine:
                self.generation += 1
                self.cond.notify_all()

    async def leave(self) -> None:
        async with self.cond:
            self.in_flight -= 1
            self.done += 1


@contextlib.contextmanager
def counting_proxy(upstream: str, gate: Gate) -> Iterator[str]:
    """An aiohttp proxy on 127.0.0.1 in a thread of its own, in front of ``upstream`` (host:port)."""
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def forward(req: web.Request) -> web.StreamResponse:
        digest = req.path.rsplit("/", 1)[-1]
        gated = "/blobs/" in req.path and digest in gate.layers and req.method == "GET"
        if gated:
            await gate.enter()
        try:
            headers = {k: v for k, v in req.headers.items() if k.lower() in ("accept", "range", "authorization")}
            async with box["session"].request(req.method, f"http://{upstream}{req.path_qs}", headers=headers,
                                              data=await req.read(), allow_redirects=False) as up:
                body = await up.read()
                keep = {k: v for k, v in up.headers.items()
                        if k.lower() in ("content-type", "docker-content-digest", "location", "range",
                                         "docker-distribution-api-version", "www-authenticate")}
                return web.Response(status=up.status, body=body, headers=keep)
        finally:
            if gated:
                await gate.leave()

    async def main() -> None:
        gate.cond = asyncio.Condition()
        box["session"] = ClientSession()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", forward)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        box["port"] = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        box["stop"] = asyncio.Event()
        box["loop"] = asyncio.get_running_loop()
        ready.set()
        await box["stop"].wait()
        await runner.cleanup()
        await box["session"].close()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(20), "the proxy did not start"
    try:
        yield f"127.0.0.1:{box['port']}"
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set)
        thread.join(20)


def layered_archive(workdir: Path, count: int, tag: str) -> Path:
    """An image of ``count`` small layers of its own (none shared with busybox), as docker save writes it."""
    stamp = str(time.time_ns()).encode()
    layers = [make_layer(tar_of_entries([Entry(f"layer{i}.txt", data=stamp + bytes([i]) * 4096)]))
              for i in range(count)]
    return docker_save_archive(build_image(layers), tag, workdir / "layered.tar")


def manifest_layers(server: str, repo: str, tag: str) -> list[str]:
    req = urllib.request.Request(f"http://{server}/v2/{repo}/manifests/{tag}",
                                 headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return [layer["digest"] for layer in json.load(resp)["layers"]]


def pull_through_gate(stack: Stack, server: str, layers: set[str], cap: int) -> Gate:
    gate = Gate(layers, cap)
    with counting_proxy(server, gate) as proxy:
        name = f"{proxy}/layered:v1"
        ok(cli(stack, "pull", name))
        ok(cli(stack, "rmi", name))
    return gate


def test_max_concurrent_downloads(request: pytest.FixtureRequest, registry: RunningRegistry,
                                  tmp_path: Path) -> None:
    stack, client = start(request, {"max-concurrent-downloads": 2})
    server = f"{registry.host}:{registry.port}"
    with open(layered_archive(tmp_path, 4, "layered:v1"), "rb") as archive:
        client.images.load(archive.read())
    seed(stack, server, "layered:v1", source="layered:v1")
    ok(cli(stack, "rmi", "layered:v1"))
    layers = set(manifest_layers(server, "layered", "v1"))
    assert len(layers) == 4

    gate = pull_through_gate(stack, server, layers, 2)
    assert not gate.timed_out, f"never 2 layers in flight at once (most: {gate.most})"
    assert gate.most == 2 and gate.done == 4, (gate.most, gate.done)

    # Not shown by docker info (dockerd has no such field): the daemon's log says when the reload is done.
    log = stack.logs["services.daemon"]
    before = log.read_text().count("configuration reloaded")
    reload(stack, client, {"max-concurrent-downloads": 3},
           lambda _: log.read_text().count("configuration reloaded") > before)
    gate = pull_through_gate(stack, server, layers, 3)
    assert not gate.timed_out, f"never 3 layers in flight at once after the reload (most: {gate.most})"
    assert gate.most == 3 and gate.done == 4, (gate.most, gate.done)
