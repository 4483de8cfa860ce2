"""Network endpoints: create, list, inspect, remove, connect, disconnect, prune."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from services.apiserver.app import Routes, backend
from services.common.errors import InvalidArgument
from services.common.grpc import call
from services.dockermodel.networks import create_request, endpoint_config, network_json
from services.gen.skiff.daemon.v1 import (
    ConnectRequest,
    DisconnectRequest,
    ListNetworksRequest,
    NetworkRef,
    PruneNetworksRequest,
)


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json() if request.can_read_body else {}
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"invalid JSON body: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidArgument("invalid JSON body: expected an object")
    return body


def _filters(request: web.Request) -> dict[str, list[str]]:
    raw = request.query.get("filters")
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except json.JSONDecodeError:
        raise InvalidArgument(f"invalid filters: {raw}") from None
    # Found by schemathesis: filters=0 (not an object) or a value that is neither list nor object was a 500.
    if not isinstance(data, dict) or not all(isinstance(v, (list, dict)) for v in data.values()):
        raise InvalidArgument(f"invalid filters: {raw}")
    return {k: list(v) if isinstance(v, list) else [x for x, on in v.items() if on] for k, v in data.items()}


async def create(request: web.Request) -> web.Response:
    body = await _body(request)
    net = await call(backend(request).networks.create(create_request(body)))
    return web.json_response({"Id": net.id, "Warning": ""}, status=201)


async def list_(request: web.Request) -> web.Response:
    filters = _filters(request)
    nets = (await call(backend(request).networks.list(ListNetworksRequest()))).networks
    out = []
    for n in nets:
        if "name" in filters and not any(f in n.name for f in filters["name"]):
            continue
        if "id" in filters and not any(n.id.startswith(f) for f in filters["id"]):
            continue
        if "driver" in filters and n.driver not in filters["driver"]:
            continue
        if "type" in filters and not any((f == "builtin") == (n.name in ("bridge", "host", "none"))
                                         for f in filters["type"]):
            continue
        out.append(network_json(n))
    return web.json_response(out)


async def inspect(request: web.Request) -> web.Response:
    found = await call(backend(request).networks.inspect(NetworkRef(id=request.match_info["id"])))
    return web.json_response(network_json(found.network, found))


async def remove(request: web.Request) -> web.Response:
    await call(backend(request).networks.remove(NetworkRef(id=request.match_info["id"])))
    return web.Response(status=204)


async def connect(request: web.Request) -> web.Response:
    body = await _body(request)
    await call(backend(request).networks.connect(ConnectRequest(
        network=request.match_info["id"], container=str(body.get("Container") or ""),
        config=endpoint_config(body.get("EndpointConfig")))))
    return web.Response(status=200)


async def disconnect(request: web.Request) -> web.Response:
    body = await _body(request)
    await call(backend(request).networks.disconnect(DisconnectRequest(
        network=request.match_info["id"], container=str(body.get("Container") or ""), force=bool(body.get("Force")))))
    return web.Response(status=200)


async def prune(request: web.Request) -> web.Response:
    deleted = (await call(backend(request).networks.prune(PruneNetworksRequest()))).deleted
    return web.json_response({"NetworksDeleted": list(deleted)})


def register(routes: Routes) -> None:
    routes.add("POST", "/networks/create", create)
    routes.add("GET", "/networks", list_)
    routes.add("GET", "/networks/", list_)
    routes.add("POST", "/networks/prune", prune)
    routes.add("GET", "/networks/{id}", inspect)
    routes.add("DELETE", "/networks/{id}", remove)
    routes.add("POST", "/networks/{id}/connect", connect)
    routes.add("POST", "/networks/{id}/disconnect", disconnect)
