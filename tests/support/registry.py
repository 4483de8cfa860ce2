"""A real ``docker-registry`` on 127.0.0.1 or another local address (optionally basic auth and TLS), and a fake
one that misbehaves.

The real one runs on a free port with a temporary storage root and config; it is killed and reaped
in ``finally``. Readiness is waited on by polling its port against a deadline (no blind sleeps).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import subprocess
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

REGISTRY_BIN = Path("/usr/bin/docker-registry")


@dataclass(slots=True)
class TestCA:
    ca_cert: Path
    cert: Path
    key: Path


def make_ca(dest: Path, host_ip: str = "127.0.0.1") -> TestCA:
    """A CA and a server certificate for 127.0.0.1/localhost, with the openssl CLI."""
    dest.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60, cwd=dest)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
        "-days", "2", "-subj", "/CN=skiff test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", f"/CN={host_ip}")
    (dest / "ext.cnf").write_text(f"subjectAltName=IP:{host_ip},DNS:localhost\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.crt", "-days", "2", "-extfile", "ext.cnf")
    return TestCA(dest / "ca.crt", dest / "server.crt", dest / "server.key")


def htpasswd_line(user: str, password: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt

        # Few bcrypt rounds: the registry checks every request and the tests make many.
        return f"{user}:{crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], deadline: float = 20.0, host: str = "127.0.0.1") -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"docker-registry exited with {proc.returncode}: {proc.stderr.read()!r}")  # type: ignore[union-attr]
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex((host, port)) == 0:
                return
        # Waiting on the kernel: a short poll interval on the socket, bounded by the deadline.
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=0.05)
    raise TimeoutError(f"docker-registry did not listen on {port} within {deadline}s")


@dataclass(slots=True)
class RunningRegistry:
    host: str
    port: int
    root: Path
    ca: TestCA | None = None
    users: dict[str, str] = field(default_factory=dict)


@contextlib.contextmanager
def run_registry(workdir: Path, *, auth: bool = False, tls: bool = False,
                 host: str = "127.0.0.1") -> Iterator[RunningRegistry]:
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    storage = workdir / "storage"
    storage.mkdir(exist_ok=True)
    lines = [
        "version: 0.1",
        "log:", "  level: error", "  accesslog:", "    disabled: true",
        "storage:", "  filesystem:", f"    rootdirectory: {storage}", "  delete:", "    enabled: true",
        "http:", f"  addr: {host}:{port}", "  secret: skiff-test-secret",
    ]
    ca = None
    if tls:
        ca = make_ca(workdir / "tls", host)
        lines += ["  tls:", f"    certificate: {ca.cert}", f"    key: {ca.key}"]
    users: dict[str, str] = {}
    if auth:
        users = {"skiff": "s3cret"}
        (workdir / "htpasswd").write_text("".join(htpasswd_line(u, p) + "\n" for u, p in users.items()))
        lines += ["auth:", "  htpasswd:", "    realm: skiff-test", f"    path: {workdir / 'htpasswd'}"]
    config = workdir / "config.yml"
    config.write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen([str(REGISTRY_BIN), "serve", str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        wait_port(port, proc, host=host)
        yield RunningRegistry(host, port, storage, ca, users)
    finally:
        proc.kill()
        proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()


# -- a misbehaving registry ---------------------------------------------------------------------


@dataclass(slots=True)
class FakeBehaviour:
    # Manifest answers carry a Docker-Content-Digest that is not the hash of the body.
    lie_manifest_digest: bool = False
    # Blob answers stop after this many bytes: ``drop_times`` times by closing the connection.
    drop_after: int | None = None
    drop_times: int = 0
    # Serve a blob shorter than announced in the manifest (a consistent, short body).
    truncate_blob: bool = False
    supports_range: bool = True
    # Demand a bearer token from /token (which wants basic credentials skiff:s3cret).
    bearer: bool = False
    requests: list[str] = field(default_factory=list)


@dataclass(slots=True)
class FakeRegistry:
    host: str
    behaviour: FakeBehaviour
    manifests: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)


@contextlib.asynccontextmanager
async def fake_registry(behaviour: FakeBehaviour | None = None) -> AsyncIterator[FakeRegistry]:
    """An aiohttp app speaking enough of distribution v2 to pull, with injectable faults."""
    beh = behaviour or FakeBehaviour()
    reg = FakeRegistry("", beh)

    @web.middleware
    async def bearer_auth(req: web.Request, handler: Any) -> web.StreamResponse:
        if not beh.bearer or req.path == "/token" or req.headers.get("Authorization") == "Bearer tok-123":
            return await handler(req)  # type: ignore[no-any-return]
        challenge = f'Bearer realm="http://{reg.host}/token",service="fake-registry"'
        return web.json_response({"errors": [{"code": "UNAUTHORIZED"}]}, status=401,
                                 headers={"WWW-Authenticate": challenge})

    async def token(req: web.Request) -> web.Response:
        beh.requests.append(f"GET token scope={req.query.get('scope', '')}")
        if req.headers.get("Authorization") != "Basic " + base64.b64encode(b"skiff:s3cret").decode():
            return web.json_response({"details": "bad credentials"}, status=401)
        return web.json_response({"token": "tok-123"})

    async def v2(_: web.Request) -> web.Response:
        return web.json_response({})

    async def manifest(req: web.Request) -> web.Response:
        beh.requests.append(f"GET manifest {req.match_info['ref']}")
        entry = reg.manifests.get(req.match_info["ref"])
        if entry is None:
            return web.json_response({"errors": [{"code": "MANIFEST_UNKNOWN"}]}, status=404)
        raw, mt = entry
        claimed = "sha256:" + "0" * 64 if beh.lie_manifest_digest else _sha(raw)
        return web.Response(body=raw, headers={"Content-Type": mt, "Docker-Content-Digest": claimed})

    async def blob(req: web.Request) -> web.StreamResponse:
        digest = req.match_info["digest"]
        beh.requests.append(f"GET blob {digest[:19]} range={req.headers.get('Range', '')}")
        data = reg.blobs.get(digest)
        if data is None:
            return web.json_response({"errors": [{"code": "BLOB_UNKNOWN"}]}, status=404)
        if beh.truncate_blob:
            return web.Response(body=data[: len(data) // 2])
        start, status = 0, 200
        rng = req.headers.get("Range")
        if rng and beh.supports_range:
            start, status = int(rng.removeprefix("bytes=").split("-")[0]), 206
        body = data[start:]
        resp = web.StreamResponse(status=status, headers={"Content-Length": str(len(body))})
        await resp.prepare(req)
        if beh.drop_after is not None and beh.drop_times > 0 and len(body) > beh.drop_after:
            beh.drop_times -= 1
            await resp.write(body[: beh.drop_after])
            # Cut the TCP connection mid-body: the client sees a short read.
            assert req.transport is not None
            req.transport.close()
            return resp
        await resp.write(body)
        await resp.write_eof()
        return resp

    app = web.Application(middlewares=[bearer_auth])
    app.router.add_get("/token", token)
    app.router.add_get("/v2/", v2)
    app.router.add_get("/v2/{name:.+}/manifests/{ref}", manifest)
    app.router.add_get("/v2/{name:.+}/blobs/{digest}", blob)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    reg.host = f"127.0.0.1:{port}"
    try:
        yield reg
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def hanging_server() -> AsyncIterator[str]:
    """Accepts connections and never answers: the client must time out on its own."""
    writers: list[asyncio.StreamWriter] = []

    async def handle(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        for w in writers:
            w.close()
        server.close()
        await server.wait_closed()


def _sha(data: bytes) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(data).hexdigest()
