"""System endpoints: /_ping, /version, /info, /system/df and the /events stream."""

from __future__ import annotations

import asyncio
import json
import socket
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from services.apiserver.app import Routes, backend
from services.apiserver.build import build_cache_rows
from services.apiserver.params import parse_filters, since_ns
from services.common import daemon_config
from services.common.grpc import call, client_errors
from services.dockermodel import system
from services.dockermodel.render import container_summary, event_json, image_summary, volume_json
from services.gen.skiff import highlevel
from services.gen.skiff.daemon.v1 import BuildUsageRequest, Empty, EventsSubscribeRequest, ListRequest, VolumesEmpty

hl = highlevel.v1
CGROUP_ROOT = Path("/sys/fs/cgroup")
PING_HEADERS = {
    "Api-Version": system.API_VERSION,
    "Docker-Experimental": "false",
    "Ostype": "linux",
    "Server": f"Skiff/{system.ENGINE_VERSION} (linux)",
    "Builder-Version": "1",
    "Cache-Control": "no-cache, no-store, must-revalidate",
    "Pragma": "no-cache",
}


async def ping(request: web.Request) -> web.Response:
    body = "" if request.method == "HEAD" else "OK"
    return web.Response(text=body, headers=PING_HEADERS, content_type="text/plain")


async def version(request: web.Request) -> web.Response:
    return web.json_response(system.version(), headers={"Api-Version": system.API_VERSION})


def _mem_total() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


def _host_facts() -> dict[str, Any]:
    """What dockerd's info tells of the host: its cgroup version and the limits its controllers allow,
    IPv4 forwarding, the time (blocking: read in a thread)."""
    v2 = (CGROUP_ROOT / "cgroup.controllers").exists()
    if v2:
        controllers = set((CGROUP_ROOT / "cgroup.controllers").read_text().split())
        memory, swap, cfs = "memory" in controllers, "memory" in controllers, "cpu" in controllers
        shares, cpuset, pids = cfs, "cpuset" in controllers, "pids" in controllers
    else:
        memory = (CGROUP_ROOT / "memory").is_dir()
        swap = (CGROUP_ROOT / "memory" / "memory.memsw.limit_in_bytes").exists()
        cfs = (CGROUP_ROOT / "cpu" / "cpu.cfs_quota_us").exists()
        shares = (CGROUP_ROOT / "cpu" / "cpu.shares").exists()
        cpuset, pids = (CGROUP_ROOT / "cpuset").is_dir(), (CGROUP_ROOT / "pids").is_dir()
    try:
        forwarding = Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == "1"
    except OSError:
        forwarding = False
    return {"CgroupVersion": "2" if v2 else "1", "MemoryLimit": memory, "SwapLimit": swap, "CpuCfsPeriod": cfs,
            "CpuCfsQuota": cfs, "CPUShares": shares, "CPUSet": cpuset, "PidsLimit": pids,
            "OomKillDisable": memory and not v2, "IPv4Forwarding": forwarding,
            "SystemTime": datetime.now(UTC).isoformat().replace("+00:00", "Z")}


async def info(request: web.Request) -> web.Response:
    data = await call(backend(request).system.info(Empty()))
    mem = await asyncio.to_thread(_mem_total)
    # What the daemon has in force (it publishes it at start and at each SIGHUP reload).
    settings = await asyncio.to_thread(daemon_config.read_in_force, backend(request).config.paths)
    facts = await asyncio.to_thread(_host_facts)
    return web.json_response({**system.info(data, socket.gethostname(), mem, settings), **facts})


async def disk_usage(request: web.Request) -> web.Response:
    """GET /system/df: the daemon's sizes of containers and volumes, beside the images' own."""
    usage = await call(backend(request).archive.disk_usage(VolumesEmpty()))
    usage_of_builds = (await call(backend(request).builds.usage(BuildUsageRequest()))).records
    images = (await call(backend(request).images.list(hl.ListImagesRequest()))).images
    containers = (await call(backend(request).containers.list(ListRequest(all=True)))).containers
    sizes = {c.id: c for c in usage.containers}
    # SharedSize: the bytes of an image's layers that another image has too (docker system df's
    # RECLAIMABLE and SHARED SIZE stand on it; -1 would mean "unknown" to the CLI).
    users: Counter[str] = Counter(digest for image in images for digest in {d.digest for d in image.layers})
    image_rows: list[dict[str, Any]] = []
    for image in images:
        row = image_summary(image)
        row["Containers"] = sum(1 for c in containers if c.image_id == image.id)
        row["SharedSize"] = sum(d.size for d in {d.digest: d for d in image.layers}.values() if users[d.digest] > 1)
        image_rows.append(row)
    container_rows = []
    for c in containers:
        row = container_summary(c)
        row["SizeRw"] = sizes[c.id].size_rw if c.id in sizes else 0
        row["SizeRootFs"] = sizes[c.id].size_root_fs if c.id in sizes else 0
        container_rows.append(row)
    return web.json_response({
        "LayersSize": sum(i.size for i in images),
        "Images": image_rows,
        "Containers": container_rows,
        "Volumes": [volume_json(v) for v in usage.volumes],
        "BuildCache": build_cache_rows(usage_of_builds),
    })


async def events(request: web.Request) -> web.StreamResponse:
    since, until = since_ns(request.query.get("since"), "since"), since_ns(request.query.get("until"), "until")
    filters = {k: json.dumps(v) for k, v in parse_filters(request.query.get("filters")).items()}
    response = web.StreamResponse(status=200)
    response.content_type = "application/json"
    await response.prepare(request)
    with client_errors():
        async for e in backend(request).events.subscribe(EventsSubscribeRequest(
                since_ns=since, until_ns=until, filters=filters)):
            await response.write(json.dumps(event_json(e)).encode() + b"\n")
    await response.write_eof()
    return response


def register(routes: Routes) -> None:
    routes.add("GET", "/_ping", ping)
    routes.add("HEAD", "/_ping", ping)
    routes.add("GET", "/version", version)
    routes.add("GET", "/info", info)
    routes.add("GET", "/system/df", disk_usage)
    routes.add("GET", "/events", events)
