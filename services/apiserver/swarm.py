"""Swarm routes as dockerd answers them on a node that is not part of a swarm (Skiff has no swarm mode).

Clients rely on these answers: docker-py's network tests call ``leave_swarm(force=True)`` in every
teardown and accept only 503 "This node is not part of a swarm"; ``docker node ls`` and friends show
dockerd's "not a swarm manager" text. The statuses and texts follow moby's daemon/cluster (errNoSwarm,
errNoManager for a node without a swarm).
"""

from __future__ import annotations

from typing import Protocol

from aiohttp import web

from services.apiserver.errors import error_response

NOT_PART_OF_SWARM = "This node is not part of a swarm"
NOT_A_MANAGER = (
    'This node is not a swarm manager. Use "docker swarm init" or "docker swarm join" to connect this node '
    "to swarm and try again."
)
NO_SWARM_MODE = "Skiff does not support swarm mode: this node cannot initialize or join a swarm"

class _Routes(Protocol):
    def add(self, method: str, path: str, handler: object) -> None: ...


async def leave(_: web.Request) -> web.Response:
    return error_response(503, NOT_PART_OF_SWARM)


async def not_a_manager(_: web.Request) -> web.Response:
    return error_response(503, NOT_A_MANAGER)


async def no_swarm_mode(_: web.Request) -> web.Response:
    return error_response(503, NO_SWARM_MODE)


# Every route of moby's swarm router; without a swarm each one needs a manager, except leave (no swarm to
# leave) and init/join (which would make one: not something Skiff can do).
MANAGER_ROUTES: tuple[tuple[str, str], ...] = (
    ("GET", "/swarm"),
    ("GET", "/swarm/unlockkey"),
    ("POST", "/swarm/update"),
    ("POST", "/swarm/unlock"),
    ("GET", "/services"),
    ("POST", "/services/create"),
    ("GET", "/services/{id}"),
    ("DELETE", "/services/{id}"),
    ("POST", "/services/{id}/update"),
    ("GET", "/services/{id}/logs"),
    ("GET", "/nodes"),
    ("GET", "/nodes/{id}"),
    ("DELETE", "/nodes/{id}"),
    ("POST", "/nodes/{id}/update"),
    ("GET", "/tasks"),
    ("GET", "/tasks/{id}"),
    ("GET", "/tasks/{id}/logs"),
    ("GET", "/secrets"),
    ("POST", "/secrets/create"),
    ("GET", "/secrets/{id}"),
    ("DELETE", "/secrets/{id}"),
    ("POST", "/secrets/{id}/update"),
    ("GET", "/configs"),
    ("POST", "/configs/create"),
    ("GET", "/configs/{id}"),
    ("DELETE", "/configs/{id}"),
    ("POST", "/configs/{id}/update"),
)


def register(routes: _Routes) -> None:
    routes.add("POST", "/swarm/leave", leave)
    routes.add("POST", "/swarm/init", no_swarm_mode)
    routes.add("POST", "/swarm/join", no_swarm_mode)
    for method, path in MANAGER_ROUTES:
        routes.add(method, path, not_a_manager)
