"""Volume endpoints: create, list, inspect, remove, prune (the local driver, in the daemon)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from services.apiserver.app import Routes, backend
from services.apiserver.params import flag, json_body, parse_filters
from services.common.errors import InvalidArgument
from services.common.grpc import call
from services.dockermodel.render import volume_json
from services.gen.skiff.daemon.v1 import (
    CreateVolumeRequest,
    ListVolumesRequest,
    PruneVolumesRequest,
    RemoveVolumeRequest,
    VolumeFilters,
    VolumeRef,
)

FILTERS = ("name", "label", "driver", "dangling")


def _filters(request: web.Request, allowed: tuple[str, ...]) -> VolumeFilters:
    raw = parse_filters(request.query.get("filters"))
    for key in raw:
        if key not in allowed:
            raise InvalidArgument(f"Invalid filter '{key}'")
    return VolumeFilters(name=raw.get("name", []), label=raw.get("label", []), driver=raw.get("driver", []),
                         dangling=raw.get("dangling", []))


def _string_map(value: Any, field: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise InvalidArgument(f"invalid {field}: expected an object of strings")
    return {str(k): v for k, v in value.items()}


async def create(request: web.Request) -> web.Response:
    body = await json_body(request)
    name, driver = body.get("Name") or "", body.get("Driver") or ""
    if not isinstance(name, str) or not isinstance(driver, str):
        raise InvalidArgument("invalid Name or Driver: expected strings")
    volume = await call(backend(request).volumes.create(CreateVolumeRequest(
        name=name, driver=driver, labels=_string_map(body.get("Labels"), "Labels"),
        driver_opts=_string_map(body.get("DriverOpts"), "DriverOpts"))))
    return web.json_response(volume_json(volume), status=201)


async def list_(request: web.Request) -> web.Response:
    reply = await call(backend(request).volumes.list(ListVolumesRequest(filters=_filters(request, FILTERS))))
    return web.json_response({"Volumes": [volume_json(v) for v in reply.volumes], "Warnings": None})


async def inspect(request: web.Request) -> web.Response:
    volume = await call(backend(request).volumes.inspect(VolumeRef(name=request.match_info["name"])))
    return web.json_response(volume_json(volume))


async def remove(request: web.Request) -> web.Response:
    await call(backend(request).volumes.remove(RemoveVolumeRequest(name=request.match_info["name"],
                                                            force=flag(request, "force"))))
    return web.Response(status=204)


async def prune(request: web.Request) -> web.Response:
    raw = parse_filters(request.query.get("filters"))
    for key in raw:
        if key not in ("label", "label!", "all"):
            raise InvalidArgument(f"Invalid filter '{key}'")
    # API 1.42 made prune keep named volumes unless all=true; an older client's prune takes them too.
    version = request.match_info.get("api_version")
    older = version is not None and tuple(int(p) for p in version.split(".")) < (1, 42)
    prune_all = older or any(v.lower() in ("1", "true") for v in raw.get("all", []))
    labels = raw.get("label", []) + [f"!{x}" for x in raw.get("label!", [])]  # the daemon's "!": must not match
    reply = await call(backend(request).volumes.prune(PruneVolumesRequest(
        filters=VolumeFilters(label=labels), all=prune_all)))
    return web.json_response({"VolumesDeleted": list(reply.deleted) or None, "SpaceReclaimed": reply.space_reclaimed})


def register(routes: Routes) -> None:
    routes.add("POST", "/volumes/create", create)
    routes.add("GET", "/volumes", list_)
    routes.add("POST", "/volumes/prune", prune)
    routes.add("GET", "/volumes/{name}", inspect)
    routes.add("DELETE", "/volumes/{name}", remove)
