"""Network set-up cost and published-port throughput.

1. Per container: a bridge endpoint (netns + veth + address + route + IPAM) against ``--network none``
   (netns with loopback only), medians over ``--runs``; the difference is what the default bridge adds
   to each ``docker run`` (dockerd: about 77 ms, 461 ms against 384 ms, on this kind of machine).
2. Throughput of ``--bytes`` over loopback through the asyncio TCP proxy against a direct connection
   to the same sink, medians over ``--transfers``.

    .venv/bin/python bench/network.py [--runs 30] [--transfers 5] [--bytes 67108864]

Needs root. Everything is made under a temporary prefix with a bridge of its own and removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.daemon.network import bridge, netns  # noqa: E402
from services.daemon.network.ipam import Ipam, choose_subnet  # noqa: E402
from services.daemon.network.portproxy import PortMapping, PortProxy  # noqa: E402

DOCKERD_BRIDGE_OVERHEAD_MS = 77.0
CHUNK = 1 << 20


def bench_setup(prefix: Path, runs: int) -> tuple[float, float]:
    tag = uuid.uuid4().hex[:8]
    ipam = Ipam(prefix / "ipam")
    netns_dir = prefix / "netns"
    subnet = choose_subnet(candidates=[f"10.{n}.{m}.0/24" for n in range(240, 250) for m in range(0, 256, 17)])
    pool = ipam.create_pool(f"bench{tag}", subnet)
    name = f"skb{tag}"
    bridge.ensure_bridge(bridge.BridgeSpec(name, f"bench{tag}", ipaddress.IPv4Interface(f"{pool.gateway}/24")))
    none_times: list[float] = []
    bridge_times: list[float] = []
    try:
        for i in range(runs):
            t = time.perf_counter()
            netns.create_none(netns_dir, f"n{i}")
            none_times.append(time.perf_counter() - t)
            netns.remove(netns_dir, f"n{i}")

            cid = f"b{i}"
            t = time.perf_counter()
            path = netns.create(netns_dir, cid)
            address = ipam.allocate(pool.network_id, cid)
            ep = bridge.attach(
                container_id=cid,
                network_id=pool.network_id,
                bridge=name,
                netns_path=path,
                address=address,
                gateway=pool.gateway,
            )
            bridge_times.append(time.perf_counter() - t)
            bridge.detach(ep.host_ifname)
            ipam.release(pool.network_id, cid)
            netns.remove(netns_dir, cid)
    finally:
        bridge.delete_bridge(name)
        for leftover in netns.list_names(netns_dir):
            netns.remove(netns_dir, leftover)
    return statistics.median(none_times), statistics.median(bridge_times)


def start_sink() -> tuple[socket.socket, threading.Event]:
    """A TCP sink on 127.0.0.1 that reads each connection to EOF and answers the byte count."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                conn.settimeout(60)
                total = 0
                while data := conn.recv(CHUNK):
                    total += len(data)
                conn.sendall(str(total).encode())

    threading.Thread(target=serve, daemon=True).start()
    return server, stop


def send(port: int, size: int) -> float:
    payload = b"\0" * CHUNK
    t = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        sent = 0
        while sent < size:
            s.sendall(payload[: min(CHUNK, size - sent)])
            sent += min(CHUNK, size - sent)
        s.shutdown(socket.SHUT_WR)
        answer = s.recv(64)
    elapsed = time.perf_counter() - t
    if int(answer) != size:
        raise RuntimeError(f"sink got {answer!r} bytes, want {size}")
    return elapsed


async def bench_proxy(transfers: int, size: int) -> tuple[float, float]:
    server, stop = start_sink()
    port = server.getsockname()[1]
    proxy = PortProxy("bench")
    started = await proxy.start([PortMapping("tcp", "127.0.0.1", 0, "127.0.0.1", port)])
    direct, proxied = [], []
    try:
        for _ in range(transfers):
            direct.append(await asyncio.to_thread(send, port, size))
            proxied.append(await asyncio.to_thread(send, started[0].host_port, size))
    finally:
        await proxy.close()
        stop.set()
        server.close()
    mib = size / (1 << 20)
    return mib / statistics.median(direct), mib / statistics.median(proxied)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--transfers", type=int, default=5)
    parser.add_argument("--bytes", type=int, default=64 << 20)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 2
    prefix = Path(tempfile.mkdtemp(prefix="skiff-bench-net-"))
    try:
        none_s, bridge_s = bench_setup(prefix, args.runs)
        added_ms = (bridge_s - none_s) * 1000
        print(f"setup  --network none  median {none_s * 1000:7.2f} ms   ({args.runs} runs)")
        print(f"setup  bridge endpoint median {bridge_s * 1000:7.2f} ms")
        print(
            f"added by the bridge: {added_ms:.2f} ms per container "
            f"(dockerd: {DOCKERD_BRIDGE_OVERHEAD_MS:.0f} ms; ratio {added_ms / DOCKERD_BRIDGE_OVERHEAD_MS:.3f})"
        )
        direct, proxied = asyncio.run(bench_proxy(args.transfers, args.bytes))
        print(f"tcp direct  median {direct:8.1f} MiB/s   ({args.transfers} x {args.bytes >> 20} MiB over loopback)")
        print(f"tcp proxied median {proxied:8.1f} MiB/s   (ratio to direct {proxied / direct:.3f})")
    finally:
        shutil.rmtree(prefix, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
