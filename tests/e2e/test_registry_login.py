"""``docker login`` through the engine's one registry client (apiserver -> daemon -> highlevel's
Images.Login) to Debian's docker-registry configured for token auth: /v2/ answers 401 with a
``WWW-Authenticate: Bearer`` challenge, and a token server written here (aiohttp on 127.0.0.1)
issues the JWTs the registry verifies against its certificate. A wrong password is Docker's 401;
after the login, push and pull go through the same challenge."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import docker
import pytest
from aiohttp import web

from tests.e2e.stack import Stack
from tests.support.registry import REGISTRY_BIN, free_port, wait_port

pytestmark = pytest.mark.skipif(shutil.which("docker") is None, reason="docker CLI not installed")

USER, PASSWORD = "skiff", "s3cret"
SERVICE, ISSUER = "skiff-test-registry", "skiff-test-token-issuer"
SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(slots=True)
class Signer:
    """RS256 with an openssl-made key: PKCS#1 v1.5 by hand (no JWT library on this machine)."""

    cert: Path
    modulus: int
    exponent: int
    cert_der: bytes

    @classmethod
    def make(cls, folder: Path) -> Signer:
        def openssl(*args: str) -> str:
            return subprocess.run(["openssl", *args], check=True, capture_output=True, text=True, timeout=60,
                                  cwd=folder).stdout

        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "token.key", "-out", "token.crt",
                "-days", "2", "-subj", "/CN=skiff test token issuer")
        text = openssl("rsa", "-in", "token.key", "-noout", "-text")

        def number(name: str) -> int:
            found = re.search(rf"^{name}:\s*\n((?:\s+[0-9a-f:]+\n)+)", text, re.M)
            assert found, f"no {name} in openssl's output"
            return int(re.sub(r"[\s:]", "", found.group(1)), 16)

        der = subprocess.run(["openssl", "x509", "-in", "token.crt", "-outform", "DER"], check=True,
                             capture_output=True, timeout=60, cwd=folder).stdout
        return cls(folder / "token.crt", number("modulus"), number("privateExponent"), der)

    def jwt(self, claims: dict[str, object]) -> str:
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(self.cert_der).decode()]}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        size = (self.modulus.bit_length() + 7) // 8
        digest = SHA256_DIGEST_INFO + hashlib.sha256(signing_input.encode()).digest()
        encoded = b"\x00\x01" + b"\xff" * (size - len(digest) - 3) + b"\x00" + digest
        signature = pow(int.from_bytes(encoded, "big"), self.exponent, self.modulus).to_bytes(size, "big")
        return f"{signing_input}.{_b64url(signature)}"


@dataclass(slots=True)
class TokenServer:
    signer: Signer
    port: int = 0
    requests: list[dict[str, str]] = field(default_factory=list)

    async def token(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        self.requests.append({"auth": auth.split(" ", 1)[0], "scope": " ".join(request.query.getall("scope", [])),
                              "service": request.query.get("service", "")})
        if auth != "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode():
            refusal = {"code": "UNAUTHORIZED", "message": "incorrect username or password"}
            return web.json_response({"errors": [refusal]}, status=401)
        access = []
        for scope in request.query.getall("scope", []):
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        claims = {"iss": ISSUER, "sub": USER, "aud": request.query.get("service", ""), "exp": now + 300,
                  "nbf": now - 10, "iat": now, "jti": uuid.uuid4().hex, "access": access}
        return web.json_response({"token": self.signer.jwt(claims), "expires_in": 300})


@contextlib.contextmanager
def serve_tokens(server: TokenServer) -> Iterator[None]:
    """The token server on its own loop in a thread: the test's docker calls block."""
    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_get("/token", server.token)
    runner = web.AppRunner(app, access_log=None)
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", server.port).start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, name="token-server", daemon=True)
    thread.start()
    try:
        assert started.wait(20), "token server did not start"
        yield
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(20)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(20)
        loop.close()


@dataclass(slots=True)
class TokenRegistry:
    server: str
    tokens: TokenServer


@pytest.fixture
def token_registry(tmp_path: Path) -> Iterator[TokenRegistry]:
    if not REGISTRY_BIN.exists():
        pytest.skip("docker-registry not installed")
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    folder = tmp_path / "token-registry"
    (folder / "storage").mkdir(parents=True)
    tokens = TokenServer(Signer.make(folder), free_port())
    port = free_port()
    config = folder / "config.yml"
    config.write_text("\n".join([
        "version: 0.1",
        "log:", "  level: error", "  accesslog:", "    disabled: true",
        "storage:", "  filesystem:", f"    rootdirectory: {folder / 'storage'}",
        "http:", f"  addr: 127.0.0.1:{port}", "  secret: skiff-test-secret",
        "auth:", "  token:", f"    realm: http://127.0.0.1:{tokens.port}/token", f"    service: {SERVICE}",
        f"    issuer: {ISSUER}", f"    rootcertbundle: {tokens.signer.cert}",
    ]) + "\n")
    with serve_tokens(tokens):
        proc = subprocess.Popen([str(REGISTRY_BIN), "serve", str(config)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True)
        try:
            wait_port(port, proc)
            yield TokenRegistry(f"127.0.0.1:{port}", tokens)
        finally:
            proc.kill()
            proc.wait(timeout=10)
            if proc.stderr is not None:
                proc.stderr.close()


def cli(stack: Stack, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DOCKER_HOST=stack.base_url, DOCKER_CONFIG=str(stack.prefix / "docker-config"))
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120, env=env, input=stdin)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args}: {result.stderr}"
    return result.stdout


def test_cli_login_follows_bearer_challenge_then_push_pull(
    stack: Stack, client: docker.DockerClient, token_registry: TokenRegistry,
) -> None:
    server = token_registry.server
    bad = cli(stack, "login", "-u", USER, "--password-stdin", server, stdin="wrong\n")
    assert bad.returncode != 0
    assert f'Error response from daemon: Get "http://{server}/v2/": unauthorized: incorrect username or password' \
        in bad.stderr, bad.stderr
    seen = token_registry.tokens.requests
    assert seen and seen[-1] == {"auth": "Basic", "scope": "", "service": SERVICE}
    assert "Login Succeeded" in ok(cli(stack, "login", "-u", USER, "--password-stdin", server, stdin=PASSWORD + "\n"))
    name = f"{server}/private/bb:v1"
    ok(cli(stack, "tag", "busybox", name))
    ok(cli(stack, "push", name))
    ok(cli(stack, "rmi", name))
    ok(cli(stack, "pull", name))
    assert ok(cli(stack, "run", "--rm", name, "echo", "through a token")) == "through a token\n"
    scopes = {r["scope"] for r in seen}
    assert "repository:private/bb:pull" in scopes and "repository:private/bb:pull,push" in scopes, scopes
    ok(cli(stack, "logout", server))
    ok(cli(stack, "rmi", name))
    denied = cli(stack, "pull", name)  # no credentials: the token server refuses, the pull fails
    assert denied.returncode != 0


def test_py_login_follows_bearer_challenge(
    stack: Stack, client: docker.DockerClient, token_registry: TokenRegistry,
) -> None:
    server = token_registry.server
    with pytest.raises(docker.errors.APIError) as refused:
        client.login(USER, "wrong", registry=server, reauth=True)
    assert refused.value.status_code == 401
    assert "unauthorized" in str(refused.value.explanation)
    reply = client.login(USER, PASSWORD, registry=server, reauth=True)
    assert reply["Status"] == "Login Succeeded"
    name = f"{server}/py/bb"
    client.images.get("busybox").tag(name, "v1")
    auth = {"username": USER, "password": PASSWORD}
    for line in client.images.push(name, "v1", auth_config=auth, stream=True, decode=True):
        assert "error" not in line, line
    client.images.remove(f"{name}:v1")
    pulled = client.images.pull(name, "v1", auth_config=auth)
    assert f"{name}:v1" in pulled.tags
