"""skiff-cri beside a test stack: the process, a CNI network of the test's own, a gRPC client of it.

The CNI config lives in the test's folder (SKIFF_CNI_CONF_DIR) with a bridge name and a subnet unique
to the run, and host-local's addresses under the test's folder too; the bridge device goes at the end
(the bridge plugin never removes it).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from grpclib.client import Channel

from services.gen.runtime import v1 as cri
from tests.e2e.netstack import cgroup_parent
from tests.e2e.stack import Stack, accepts
from tests.support.tasks import wait_for

T = TypeVar("T")


def free_subnet() -> ipaddress.IPv4Network:
    from services.daemon.network.ipam import host_networks

    busy = host_networks()
    for _ in range(200):
        raw = hashlib.sha256(os.urandom(8)).digest()
        candidate = ipaddress.IPv4Network(f"10.{150 + raw[0] % 40}.{raw[1]}.0/24")
        if not any(candidate.overlaps(b) for b in busy):
            return candidate
    raise AssertionError("no free 10.x subnet for the CNI network")


@dataclass(slots=True)
class CriStack:
    stack: Stack
    folder: Path
    proc: subprocess.Popen[bytes] | None = None
    bridge: str = ""
    subnet: ipaddress.IPv4Network | None = None
    log: Path = field(default_factory=Path)

    @property
    def socket(self) -> Path:
        return self.stack.paths.run / "cri.sock"

    @property
    def cgroup_parent(self) -> str:
        return cgroup_parent(self.stack.prefix)

    def write_cni(self) -> Path:
        conf_dir = self.folder / "net.d"
        conf_dir.mkdir(parents=True, exist_ok=True)
        self.bridge = "skc" + hashlib.sha256(str(self.folder).encode()).hexdigest()[:10]
        self.subnet = free_subnet()
        conf = {"cniVersion": "1.0.0", "name": "skiff-cri-test", "plugins": [
            {"type": "bridge", "bridge": self.bridge, "isGateway": True, "ipMasq": False, "hairpinMode": True,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": str(self.subnet)}]],
                      "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(self.folder / "ipam")}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ]}
        (conf_dir / "10-test.conflist").write_text(json.dumps(conf))
        return conf_dir

    def start(self) -> None:
        conf_dir = self.folder / "net.d"
        if not conf_dir.exists():
            self.write_cni()
        self.log = self.stack.prefix / "cri.log"
        env = dict(os.environ, SKIFF_LOG_FORMAT="json", SKIFF_CGROUP_PARENT=self.cgroup_parent,
                   SKIFF_CNI_CONF_DIR=str(conf_dir), SKIFF_CNI_BIN_DIR="/usr/lib/cni")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "services.cri", "--root", str(self.stack.prefix),
                                          "--runtime", self.stack.runtime],
                                         stdout=subprocess.DEVNULL, stderr=log, env=env)
        proc = self.proc

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"skiff-cri exited {proc.returncode}: {self.log.read_text()[-3000:]}")
            return accepts(self.socket)

        wait_for(ready, 30, "skiff-cri socket")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def remove_pod_cgroups(self) -> None:
        """The pods' cgroup parents below the stack's (kubelet makes and removes them, not the runtime)."""
        for hierarchy in Path("/sys/fs/cgroup").iterdir():
            for folder in sorted((hierarchy / self.cgroup_parent).glob("pod-*"), reverse=True):
                with contextlib.suppress(OSError):
                    folder.rmdir()

    def remove_bridge(self) -> None:
        from pyroute2 import IPRoute

        with IPRoute() as ipr, contextlib.suppress(Exception):
            found = ipr.link_lookup(ifname=self.bridge)
            if found:
                ipr.link("del", index=found[0])

    def client(self) -> CriClient:
        return CriClient(self.socket)


class CriClient:
    """Blocking calls of the generated stubs over one channel (a loop of its own)."""

    def __init__(self, socket: Path) -> None:
        self.loop = asyncio.new_event_loop()

        async def channel() -> Channel:  # made inside the loop it will run on
            return Channel(path=str(socket))

        self.channel = self.loop.run_until_complete(channel())
        self.runtime = cri.RuntimeServiceStub(self.channel)
        self.images = cri.ImageServiceStub(self.channel)

    def __call__(self, make: Callable[[], Awaitable[T]], timeout: float = 60) -> T:
        async def go() -> T:
            return await asyncio.wait_for(make(), timeout)

        return self.loop.run_until_complete(go())

    def rt(self, method: str, request: Any, timeout: float = 60) -> Any:
        return self(lambda: getattr(self.runtime, method)(request), timeout)

    def close(self) -> None:
        self.channel.close()
        self.loop.close()


def wait_state(client: CriClient, container_id: str, state: cri.ContainerState,
               within: float = 30) -> cri.ContainerStatus:
    deadline = time.monotonic() + within
    while True:
        status = client.rt("container_status", cri.ContainerStatusRequest(container_id=container_id)).status
        if status.state == state:
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"container {container_id} still {status.state}, not {state}")
        time.sleep(0.1)


def fetch(url: str) -> str | None:
    """The body of a GET to a pod's (or a forwarded) port; None while nothing answers there."""
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:  # noqa: S310 - the test's own server
            return answer.read().decode().strip()
    except OSError:
        return None
