"""Network endpoints: create, list (with dockerd's filters), inspect, remove, connect, disconnect, prune
(with its filters: until, label, label!)."""

from __future__ import annotations

import contextlib
import json
import re
from typing import Any

from aiohttp import web

from services.apiserver.app import Routes, backend
from services.apiserver.params import since_ns
from services.common.errors import Conflict, InvalidArgument, NotFound
from services.common.grpc import call
from services.dockermodel.networks import create_request, endpoint_config, network_json
from services.dockermodel.times import parse_time
from services.gen.skiff.daemon.v1 import (
    ConnectRequest,
    DisconnectRequest,
    ListNetworksRequest,
    Network,
    NetworkRef,
    PruneNetworksRequest,
)

BUILTIN = ("bridge", "host", "none")


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json() if request.can_read_body else {}
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"invalid JSON body: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidArgument("invalid JSON body: expected an object")
    return body


LIST_FILTERS = ("dangling", "driver", "id", "label", "name", "scope", "type")
PRUNE_FILTERS = ("until", "label", "label!")
TRUE_WORDS, FALSE_WORDS = ("true", "1"), ("false", "0")


def _filters(request: web.Request, accepted: tuple[str, ...]) -> dict[str, list[str]]:
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
    filters = {k: [str(x) for x in v] if isinstance(v, list) else [x for x, on in v.items() if on]
               for k, v in data.items()}
    for key, values in filters.items():
        if key not in accepted:
            raise InvalidArgument(f"Invalid filter '{key}'")
        for value in values:
            if key == "dangling" and value.lower() not in TRUE_WORDS + FALSE_WORDS:
                raise InvalidArgument("invalid value for filter 'dangling', must be \"true\" (or \"1\"), or "
                                      "\"false\" (or \"0\")")
            if key == "type" and value not in ("custom", "builtin"):
                raise InvalidArgument(f"invalid filter: 'type'='{value}'")
    return filters


def _search(pattern: str, text: str) -> bool:
    """dockerd's filters.Match: the value exactly, else as a regular expression found in the text."""
    try:
        return pattern == text or re.search(pattern, text) is not None
    except re.error:
        return False


def _label_matches(labels: dict[str, str], wanted: str) -> bool:
    key, eq, value = wanted.partition("=")
    return key in labels and (not eq or labels[key] == value)


def _listed(n: Network, filters: dict[str, list[str]], in_use: bool) -> bool:
    """GET /networks' filters, as dockerd's: each key's values or-ed, the keys and-ed."""
    builtin = n.name in BUILTIN
    checks = {
        "name": lambda f: _search(f, n.name), "id": lambda f: _search(f, n.id), "driver": lambda f: f == n.driver,
        "scope": lambda f: f == (n.scope or "local"), "type": lambda f: (f == "builtin") == builtin,
        "dangling": lambda f: (f.lower() in TRUE_WORDS) == (not builtin and not in_use),
    }
    for key, check in checks.items():
        if key in filters and not any(check(f) for f in filters[key]):
            return False
    return all(_label_matches(dict(n.labels), f) for f in filters.get("label", []))


def _prunable(n: Network, filters: dict[str, list[str]]) -> bool:
    """POST /networks/prune's filters: created before every ``until``, every ``label`` and no ``label!`` matching."""
    labels = dict(n.labels)
    created = parse_time(n.created) * 1e9
    return (all(created < since_ns(u, "until") for u in filters.get("until", []))
            and all(_label_matches(labels, f) for f in filters.get("label", []))
            and not any(_label_matches(labels, f) for f in filters.get("label!", [])))


async def create(request: web.Request) -> web.Response:
    body = await _body(request)
    net = await call(backend(request).networks.create(create_request(body)))
    return web.json_response({"Id": net.id, "Warning": ""}, status=201)


async def list_(request: web.Request) -> web.Response:
    filters = _filters(request, LIST_FILTERS)
    nets = (await call(backend(request).networks.list(ListNetworksRequest()))).networks
    out = []
    for n in nets:
        in_use = False
        if "dangling" in filters and n.name not in BUILTIN:
            in_use = bool((await call(backend(request).networks.inspect(NetworkRef(id=n.id)))).containers)
        if _listed(n, filters, in_use):
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
    filters = _filters(request, PRUNE_FILTERS)
    if not filters:
        deleted = list((await call(backend(request).networks.prune(PruneNetworksRequest()))).deleted)
        return web.json_response({"NetworksDeleted": deleted})
    # With filters: as dockerd, each chosen network removed in turn, those in use left.
    deleted = []
    for n in (await call(backend(request).networks.list(ListNetworksRequest()))).networks:
        if n.name in BUILTIN or not _prunable(n, filters):
            continue
        with contextlib.suppress(Conflict, NotFound):
            await call(backend(request).networks.remove(NetworkRef(id=n.id)))
            deleted.append(n.name)
    return web.json_response({"NetworksDeleted": deleted})


def register(routes: Routes) -> None:
    routes.add("POST", "/networks/create", create)
    routes.add("GET", "/networks", list_)
    routes.add("GET", "/networks/", list_)
    routes.add("POST", "/networks/prune", prune)
    routes.add("GET", "/networks/{id}", inspect)
    routes.add("DELETE", "/networks/{id}", remove)
    routes.add("POST", "/networks/{id}/connect", connect)
    routes.add("POST", "/networks/{id}/disconnect", disconnect)
