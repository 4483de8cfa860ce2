"""An ended container's endpoints released after its teardown returns, not during it.

Deleting a veth takes the kernel 25-35 ms (RCU grace periods under the rtnl lock), and a container's
teardown lies on the path of every exit that a client waits on (``docker run --rm``, ``docker wait``).
Removing the container's namespace pin is 0.1 ms, and the kernel then destroys the namespace and
the veth pair in it on its own. What is left runs here, off that path: make sure each veth is gone
(deleted outright if something still holds the namespace) and only then hand its addresses back,
so that no new endpoint is given an address that a dying one still answers for.

Anything that hands out addresses (``settled``) first waits for the releases still under way: a
``--ip`` reused right after a removal, or the same container started again, never meets its own
old allocation. After a daemon crash the start-up reconciliation removes what was not released.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Sequence

import structlog
from pyroute2.netlink.exceptions import NetlinkError

from services.common.errors import SkiffError
from services.daemon.network import bridge

log = structlog.get_logger(service="daemon")

GONE_TIMEOUT = 1.0  # the kernel's namespace clean-up normally takes tens of ms
GONE_POLL = 0.01
SETTLE_TIMEOUT = 10.0


def _present(ifname: str) -> bool:
    # sysfs shows the reader's own namespace: the daemon's, where the host-side veth lives. A file
    # check costs microseconds where a netlink lookup costs a socket and a millisecond of CPU.
    return os.path.exists(f"/sys/class/net/{ifname}")


class EndpointReleases:
    """Releases under way, one chain per container."""

    def __init__(self, release_addresses: Callable[[str, str], object]) -> None:
        self._release_addresses = release_addresses  # (network id, container id): Ipam.release
        self._pending: dict[str, asyncio.Task[None]] = {}

    def start(self, container_id: str, endpoints: Sequence[tuple[str, str]]) -> None:
        """Release ``endpoints`` ((host veth, network id) pairs) once their veths are gone."""
        if not endpoints:
            return
        previous = self._pending.get(container_id)
        task = asyncio.ensure_future(self._release(container_id, list(endpoints), previous))
        self._pending[container_id] = task
        task.add_done_callback(lambda done: self._forget(container_id, done))

    def _forget(self, container_id: str, done: asyncio.Task[None]) -> None:
        if self._pending.get(container_id) is done:  # not a later release chained behind it
            del self._pending[container_id]

    async def _release(self, container_id: str, endpoints: list[tuple[str, str]],
                       previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            await asyncio.wait([previous])  # its outcome is its own (logged there)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + GONE_TIMEOUT
        while any(_present(ifname) for ifname, _ in endpoints) and loop.time() < deadline:
            await asyncio.sleep(GONE_POLL)

        def release() -> None:
            for ifname, network_id in endpoints:
                if _present(ifname):  # its namespace is still held (by a process that joined it)
                    bridge.detach(ifname)
                self._release_addresses(network_id, container_id)

        try:
            await asyncio.to_thread(release)
        except (OSError, NetlinkError, SkiffError) as exc:
            # Left to the reconciliation at the next start, as after a crash.
            log.warning("endpoint release failed", id=container_id, error=str(exc))

    async def settled(self) -> None:
        """Every release under way has finished (bounded: a stuck one is given up on, not waited for)."""
        pending = list(self._pending.values())
        if pending:
            await asyncio.wait(pending, timeout=SETTLE_TIMEOUT)
