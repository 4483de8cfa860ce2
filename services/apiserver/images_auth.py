"""POST /auth (docker login): the credentials are checked against the registry's /v2/ endpoint.

Nothing is stored: the CLI keeps them and sends X-Registry-Auth with each pull and push. TLS trusts
what ``certs.d/<host:port>/`` holds, as pulls and pushes do."""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from pathlib import Path

import aiohttp
from aiohttp import web

from services.apiserver.errors import error_response
from services.apiserver.server import Routes, backend
from services.common.errors import InvalidArgument, Unavailable
from services.common.registry_tls import CertificateError, ssl_context, x509_message

TIMEOUT = aiohttp.ClientTimeout(total=15)


def _host(server: str) -> str:
    server = server.split("://", 1)[-1].split("/", 1)[0]
    return "registry-1.docker.io" if server in ("", "docker.io", "index.docker.io") else server


def _loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0].strip("[]") if host.count(":") == 1 or host.startswith("[") else host
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


async def _status(url: str, auth: aiohttp.BasicAuth, host: str, certs_d: Path) -> int:
    # Loading the system's CA bundle and the certs.d files is blocking file work: in a thread.
    tls: ssl.SSLContext | bool = (await asyncio.to_thread(ssl_context, certs_d, host)
                                  if url.startswith("https://") else False)
    try:
        async with aiohttp.ClientSession(timeout=TIMEOUT) as session, session.get(url, auth=auth, ssl=tls) as reply:
            return reply.status
    except aiohttp.ClientConnectorCertificateError as exc:
        # Untrusted is an answer, not a reason to try plain http: dockerd's 500 with Go's x509 wording.
        raise CertificateError(x509_message("GET", url, exc, host, certs_d)) from None


async def login(request: web.Request) -> web.Response:
    try:
        body = await request.json()
    except ValueError as exc:
        raise InvalidArgument(f"invalid login body: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidArgument("invalid login body")
    host = _host(str(body.get("serveraddress") or ""))
    auth = aiohttp.BasicAuth(str(body.get("username") or ""), str(body.get("password") or ""))
    # Like Docker: https first; plain http only for a loopback registry (127.0.0.0/8 is insecure by default).
    schemes = ["https", "http"] if _loopback(host) else ["https"]
    last = ""
    certs_d = backend(request).config.paths.certs_d
    for scheme in schemes:
        try:
            status = await _status(f"{scheme}://{host}/v2/", auth, host, certs_d)
        except (aiohttp.ClientError, TimeoutError) as exc:
            last = str(exc)
            continue
        if status == 401:
            return error_response(401, f"login attempt to {scheme}://{host}/v2/ failed with status: 401 Unauthorized")
        if status < 400:
            return web.json_response({"Status": "Login Succeeded", "IdentityToken": ""})
        last = f"status {status}"
    raise Unavailable(f"cannot reach registry {host}: {last}")


def register(routes: Routes) -> None:
    routes.add("POST", "/auth", login)
