"""POST /auth (docker login): the daemon's Images.Login, served by highlevel's registry client.

The one registry client checks the credentials against the registry's /v2/, following its Basic or
Bearer challenge as a pull does; refused is Docker's 401. Nothing is stored: the CLI keeps the
credentials and sends X-Registry-Auth with each pull and push."""

from __future__ import annotations

from aiohttp import web

from services.apiserver.app import Routes, backend
from services.common.errors import InvalidArgument
from services.common.grpc import call
from services.gen.skiff.highlevel.v1 import LoginRequest, RegistryAuth


async def login(request: web.Request) -> web.Response:
    try:
        body = await request.json()
    except ValueError as exc:
        raise InvalidArgument(f"invalid login body: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidArgument("invalid login body")
    auth = RegistryAuth(username=str(body.get("username") or ""), password=str(body.get("password") or ""),
                        identity_token=str(body.get("identitytoken") or ""),
                        server_address=str(body.get("serveraddress") or ""))
    reply = await call(backend(request).images.login(LoginRequest(auth=auth)))
    return web.json_response({"Status": reply.status, "IdentityToken": reply.identity_token})


def register(routes: Routes) -> None:
    routes.add("POST", "/auth", login)
