"""Container removals beyond ``DELETE /containers/{id}``: ``POST /containers/prune`` and
``DELETE /containers/{parent}/{alias}`` (with ``link=1`` the legacy link goes; without, as dockerd
resolves the link's name, the linked container itself)."""

from __future__ import annotations

from aiohttp import web

from services.apiserver.app import Routes, backend
from services.apiserver.params import flag, parse_filters, since_ns
from services.common.errors import InvalidArgument, NotFound
from services.common.grpc import call
from services.gen.skiff.daemon.v1 import ContainerPruneRequest, ContainerRef, RemoveRequest, UnlinkRequest

PRUNE_FILTERS = ("until", "label", "label!")


async def prune(request: web.Request) -> web.Response:
    filters = parse_filters(request.query.get("filters"))
    for key in filters:
        if key not in PRUNE_FILTERS:
            raise InvalidArgument(f"Invalid filter '{key}'")
    until = filters.get("until", [])
    if len(until) > 1:
        raise InvalidArgument("more than one until filter specified")
    reply = await call(backend(request).removal.prune(ContainerPruneRequest(
        until_ns=since_ns(until[0], "until") if until else 0, label=filters.get("label", []),
        label_not=filters.get("label!", []))))
    return web.json_response({"ContainersDeleted": list(reply.deleted) or None,
                              "SpaceReclaimed": reply.space_reclaimed})


async def remove_by_link(request: web.Request) -> web.Response:
    parent, alias = request.match_info["parent"], request.match_info["alias"]
    full = f"{parent}/{alias}"
    if flag(request, "link"):
        await call(backend(request).removal.unlink(UnlinkRequest(name=full)))
        return web.Response(status=204)
    # dockerd's name registry holds "/<parent>/<alias>" for the linked container: that one goes.
    record = await call(backend(request).containers.inspect(ContainerRef(id=parent)))
    for link in record.config.host.links:
        name, _, link_alias = link.partition(":")
        if (link_alias or name) == alias:
            await call(backend(request).containers.remove(RemoveRequest(
                id=name, force=flag(request, "force"), volumes=flag(request, "v"))))
            return web.Response(status=204)
    raise NotFound(f"No such container: {full}")


def register(routes: Routes) -> None:
    routes.add("POST", "/containers/prune", prune)
    routes.add("DELETE", "/containers/{parent}/{alias}", remove_by_link)
