"""A distribution v2 registry client over aiohttp: login, pull and push, token and basic auth, TLS.

The engine's one registry client: ``docker login`` comes here too (apiserver -> daemon -> the
Images.Login RPC), so a login follows a ``WWW-Authenticate`` challenge exactly as a pull does.

Where a pull goes is services/common/registry_hosts.py's answer for the reference's registry:
containerd's ``hosts.toml`` when its folder has one, else Docker's rules (the Hub's
``registry-mirrors``, then the registry itself). A pull tries those hosts in order for each request
(a manifest by tag on the hosts that may ``resolve``, by digest and blobs on those that may ``pull``),
falling back to the next on any error, and keeps asking first the one that answered. Push and login
go to the registry itself. ``insecure-registries`` lift TLS verification and allow plain http.

Every network wait is bounded (connect and read timeouts) and every retry loop is bounded; a
broken blob download resumes with ``Range`` when the registry allows it, else restarts.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import re
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urljoin

import aiohttp

from services.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    SkiffError,
    Unauthorized,
    Unavailable,
)
from services.common.registry_hosts import DOCKER_HUB_HOST, DockerSettings, RegistryHost, docker_hosts, resolve_hosts
from services.common.registry_tls import CertificateError, host_context, x509_message
from services.highlevel.content.store import BlobWriter, DigestMismatch
from services.highlevel.images.manifest import ACCEPT, Descriptor, sha256_digest
from services.highlevel.images.progress import ProgressEvent, ProgressFn, ProgressStatus, no_progress, short_id
from services.highlevel.images.reference import DEFAULT_DOMAIN, Reference

MAX_MANIFEST_BYTES = 4 << 20
_CHALLENGE_RE = re.compile(r'(\w+)="([^"]*)"')
_NETWORK_ERRORS = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError)


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str = ""
    password: str = ""
    identity_token: str = ""


@dataclass(frozen=True, slots=True)
class RegistryOptions:
    ca_file: Path | None = None  # trusted for every registry
    # <certs_d>/<host:port>/: CAs and client certificates of one registry, and containerd's hosts.toml
    certs_d: Path | None = None
    # None: https, and for a loopback or insecure host only, plain http when https does not answer (as Docker).
    plain_http: bool | None = None
    mirrors: tuple[str, ...] = ()  # daemon.json's registry-mirrors (Docker Hub pulls only)
    insecure: tuple[str, ...] = ()  # daemon.json's insecure-registries (host:port or CIDR)
    connect_timeout: float = 15.0
    read_timeout: float = 60.0
    retries: int = 3
    backoff: float = 0.2
    concurrency: int = 3  # layers of one pull (or push) in flight: daemon.json's max-concurrent-downloads
    chunk_size: int = 8 << 20
    progress_step: int = 512 << 10


class RegistryError(Unavailable):
    pass


class AuthError(FailedPrecondition):
    pass


def registry_host(server: str) -> str:
    """The one normaliser of what clients call a registry: ``https://index.docker.io/v1/``,
    ``docker.io`` or ``""`` is Docker Hub's API host; otherwise the ``host[:port]`` of a URL or name."""
    server = server.strip().split("://", 1)[-1].split("/", 1)[0]
    return DOCKER_HUB_HOST if server in ("", DEFAULT_DOMAIN, "index.docker.io") else server


@dataclass(slots=True)
class _HostState:
    base: str | None = None
    basic: str | None = None
    tokens: dict[str, str] = field(default_factory=dict)


class RegistryClient:
    def __init__(self, options: RegistryOptions | None = None,
                 credentials: dict[str, Credentials] | None = None) -> None:
        self.options = options or RegistryOptions()
        self.credentials = credentials or {}
        self._session: aiohttp.ClientSession | None = None
        self._hosts: dict[str, _HostState] = {}
        self._ssl: dict[str, ssl.SSLContext] = {}
        self._routes: dict[str, list[RegistryHost]] = {}
        self._preferred: dict[str, RegistryHost] = {}
        self._docker = DockerSettings(self.options.mirrors, self.options.insecure)

    async def ssl_for(self, ep: RegistryHost) -> ssl.SSLContext:
        """This host's trust: the system's, the configured CA, its certs.d folder and what its hosts.toml
        entry adds (read once, in a thread: loading CA bundles is blocking file work)."""
        ctx = self._ssl.get(ep.key)
        if ctx is None:
            ctx = await asyncio.to_thread(
                host_context, self.options.certs_d, ep.host, self.options.ca_file, ca=ep.ca, client=ep.client,
                skip_verify=ep.skip_verify or ep.insecure)
            self._ssl[ep.key] = ctx
        return ctx

    async def _send(self, method: str, url: str, ep: RegistryHost, *, probing: bool = False,
                    **kwargs: Any) -> aiohttp.ClientResponse:
        """One request with the TLS settings of its host; an untrusted certificate is told as Docker does
        (and not retried: it will not get better), and so is TLS spoken to a plain http server."""
        host = _url_host(url)
        if url.startswith("https://"):
            kwargs["ssl"] = await self.ssl_for(ep if host == ep.host else self.direct(host))  # e.g. a token realm
        try:
            return await self.session.request(method, url, **kwargs)
        except aiohttp.ClientConnectorCertificateError as exc:
            raise CertificateError(x509_message(method, url, exc, host, self.options.certs_d)) from None
        except (aiohttp.ClientSSLError, aiohttp.ClientOSError) as exc:
            if probing or not url.startswith("https://") or not _plain_http_answer(exc):
                raise
            raise RegistryError(
                f'{method.capitalize()} "{url}": http: server gave HTTP response to HTTPS client (a registry '
                f"served over plain http must be listed in daemon.json's insecure-registries: {host})") from None

    async def __aenter__(self) -> RegistryClient:
        timeout = aiohttp.ClientTimeout(
            total=None, connect=self.options.connect_timeout, sock_connect=self.options.connect_timeout,
            sock_read=self.options.read_timeout,
        )
        self._session = aiohttp.ClientSession(
            timeout=timeout, connector=aiohttp.TCPConnector(limit=16), auto_decompress=False,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("RegistryClient used outside `async with`")
        return self._session

    # -- endpoints and auth -------------------------------------------------------------------
    @staticmethod
    def host_of(ref: Reference) -> str:
        return DOCKER_HUB_HOST if ref.domain == DEFAULT_DOMAIN else ref.domain

    def direct(self, host: str) -> RegistryHost:
        """The registry itself (push and login go there, never to a mirror)."""
        return docker_hosts(host, dataclasses.replace(self._docker, mirrors=()))[-1]

    async def hosts_for(self, ref: Reference) -> list[RegistryHost]:
        """Where this pull sends the reference's requests, in order (hosts.toml read once per client,
        so a change to it takes effect from the next pull, as containerd's)."""
        hosts = self._routes.get(ref.domain)
        if hosts is None:
            hosts = await asyncio.to_thread(resolve_hosts, self.options.certs_d, ref.domain, self._docker)
            self._routes[ref.domain] = hosts
        return hosts

    async def _each_host(self, ref: Reference, capability: str, fn: Any) -> Any:
        """``fn(host)`` on the reference's hosts that have ``capability``, the one that answered last
        first, until one succeeds; the last host's error (naming what the others said) when none does."""
        hosts = [h for h in await self.hosts_for(ref) if h.can(capability)]
        if not hosts:
            raise FailedPrecondition(f"no host of registry {ref.domain} may {capability} (see its hosts.toml)")
        preferred = self._preferred.get(ref.domain)
        if preferred in hosts and len(hosts) > 1:
            hosts.remove(preferred)
            hosts.insert(0, preferred)
        failures: list[tuple[RegistryHost, SkiffError]] = []
        for ep in hosts:
            try:
                result = await fn(ep)
            except SkiffError as exc:
                failures.append((ep, exc))
                continue
            self._preferred[ref.domain] = ep
            return result
        last = failures[-1][1]
        if len(failures) == 1:
            raise last
        tried = "; ".join(f"{ep.describe()}: {exc.message}" for ep, exc in failures[:-1])
        raise type(last)(f"{last.message} (tried first: {tried})") from None

    def _state(self, ep: RegistryHost) -> _HostState:
        return self._hosts.setdefault(ep.key, _HostState())

    async def _base(self, ep: RegistryHost) -> str:
        """The host's API root URL (``https://host/v2``): for a loopback or insecure host without a scheme
        of its own, https when it answers, else plain http."""
        state = self._state(ep)
        if state.base is not None:
            return state.base
        forced = self.options.plain_http if ep.upstream else None
        scheme = ("http" if forced else "https") if forced is not None else ep.scheme
        if scheme is None:
            # Try TLS first; a loopback (or insecure) registry without it is still reachable (Docker does
            # this). An untrusted certificate is an error (CertificateError), not a reason to go plain,
            # unless the host is insecure (its certificate is not checked at all).
            try:
                async with await self._send("GET", f"https://{ep.host}/v2/", ep, probing=True,
                                            allow_redirects=False) as resp:
                    await resp.read()
                scheme = "https"
            except (aiohttp.ClientConnectorError, aiohttp.ClientSSLError, aiohttp.ServerDisconnectedError,
                    aiohttp.ClientOSError):
                scheme = "http"
            except TimeoutError:
                raise RegistryError(f"registry {ep.host} did not answer within the timeout") from None
        state.base = f"{scheme}://{ep.host}{ep.path}"
        return state.base

    def _creds(self, ep: RegistryHost) -> Credentials | None:
        """The host's own credentials, else those given for the registry it stands in for (a mirror)."""
        for host in (ep.host, ep.namespace):
            found = self.credentials.get(host) or (
                self.credentials.get(DEFAULT_DOMAIN) if host in (DOCKER_HUB_HOST, DEFAULT_DOMAIN) else None)
            if found is not None:
                return found
        return None

    async def _authenticate(self, ep: RegistryHost, challenge: str, scopes: list[str]) -> None:
        host = ep.host
        state = self._state(ep)
        scheme, _, params_text = challenge.partition(" ")
        params = dict(_CHALLENGE_RE.findall(params_text))
        creds = self._creds(ep)
        if scheme.lower() == "basic":
            if creds is None or not creds.username:
                raise AuthError(f"registry {host} wants credentials: no basic auth configured (docker login)")
            state.basic = "Basic " + base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()
            return
        if scheme.lower() != "bearer" or "realm" not in params:
            raise AuthError(f"registry {host}: unsupported authentication challenge `{challenge}`")
        query: list[tuple[str, str]] = []
        if "service" in params:
            query.append(("service", params["service"]))
        query += [("scope", s) for s in scopes]
        headers = {}
        if creds is not None and creds.username:
            headers["Authorization"] = "Basic " + base64.b64encode(
                f"{creds.username}:{creds.password}".encode()).decode()
        url = params["realm"] + ("?" + urlencode(query) if query else "")
        try:
            async with await self._send("GET", url, ep, headers=headers) as resp:
                body = await resp.read()
                if resp.status in (401, 403):
                    raise AuthError(f"registry {host}: authentication refused by {params['realm']}: "
                                    f"{_registry_message(body) or resp.reason}")
                if resp.status != 200:
                    raise RegistryError(f"registry {host}: token endpoint answered {resp.status}")
        except _NETWORK_ERRORS as exc:
            raise RegistryError(f"registry {host}: token endpoint unreachable: {exc!r}") from None
        doc = json.loads(body)
        token = doc.get("token") or doc.get("access_token")
        if not token:
            raise AuthError(f"registry {host}: token endpoint gave no token")
        state.tokens[" ".join(scopes)] = f"Bearer {token}"

    def _auth_header(self, ep: RegistryHost, scopes: list[str]) -> dict[str, str]:
        state = self._state(ep)
        token = state.tokens.get(" ".join(scopes)) or state.basic
        return {"Authorization": token} if token else {}

    async def _request(
        self, method: str, ep: RegistryHost, path_or_url: str, scopes: list[str], *,
        headers: dict[str, str] | None = None, data: Any = None, ok: tuple[int, ...] = (200,),
    ) -> aiohttp.ClientResponse:
        """One request with auth; the caller reads (and releases) the response. A path is written as the
        distribution spec writes it (``/v2/...``) and sent below the host's API root."""
        base = await self._base(ep)
        url = path_or_url if path_or_url.startswith("http") else base + path_or_url.removeprefix("/v2")
        for attempt in range(2):
            all_headers = {**_joined(ep.headers), **(headers or {}), **self._auth_header(ep, scopes)}
            resp = await self._send(method, url, ep, headers=all_headers, data=data)
            if resp.status == 401 and attempt == 0 and "WWW-Authenticate" in resp.headers:
                challenge = resp.headers["WWW-Authenticate"]
                resp.release()
                await self._authenticate(ep, challenge, scopes)
                continue
            if resp.status in ok:
                return resp
            body = (await resp.read())[:400].decode(errors="replace")
            resp.release()
            raise _status_error(resp.status, f"{method} {url}", body)
        raise AuthError(f"registry {ep.host}: unauthorized for {' '.join(scopes)}")

    async def _retrying(self, what: str, host: str, fn: Any) -> Any:
        """Bounded retries of an idempotent request on network errors and timeouts."""
        for attempt in range(self.options.retries + 1):
            try:
                return await fn()
            except _NETWORK_ERRORS as exc:
                if attempt >= self.options.retries:
                    raise RegistryError(
                        f"{what} from {host}: {_describe(exc)} (gave up after {attempt + 1} attempts)"
                    ) from None
                await asyncio.sleep(self.options.backoff * (2 ** attempt))
        raise AssertionError("unreachable")

    # -- login --------------------------------------------------------------------------------
    async def login(self, server: str) -> None:
        """``docker login``: GET /v2/ answers 200 with these credentials, after the challenge it
        sends (Basic, or Bearer through its token endpoint, as a pull meets it). Nothing is kept:
        the client sends its credentials again with each pull and push.

        Refused: Unauthorized with dockerd's words (a 401 to the client); unreachable: Unavailable.
        """
        host = registry_host(server)
        ep = self.direct(host)
        base = await self._base(ep)
        url = f"{base}/"

        async def once() -> None:
            try:
                resp = await self._request("GET", ep, "/v2/", [])
            except AuthError as exc:
                if self._state(ep).basic is not None or "authentication refused" not in exc.message:
                    raise Unauthorized(f"login attempt to {url} failed with status: 401 Unauthorized") from None
                raise Unauthorized(f'Get "{url}": unauthorized: {exc.message.rsplit(": ", 1)[-1]}') from None
            resp.release()

        await self._retrying("login", host, once)

    # -- pull ---------------------------------------------------------------------------------
    async def get_manifest(self, ref: Reference, obj: str | None = None) -> tuple[bytes, str, str]:
        """(raw bytes, media type header, digest); the bytes are checked against every digest claimed."""
        scopes = [f"repository:{ref.path}:pull"]
        target = obj or ref.object

        async def once(ep: RegistryHost) -> tuple[bytes, str, str]:
            resp = await self._request("GET", ep, f"/v2/{ref.path}/manifests/{target}", scopes,
                                       headers={"Accept": ACCEPT})
            async with resp:
                if (resp.content_length or 0) > MAX_MANIFEST_BYTES:
                    raise InvalidArgument(f"manifest of {ref} is larger than {MAX_MANIFEST_BYTES} bytes")
                raw = await resp.content.read(MAX_MANIFEST_BYTES + 1)
                if len(raw) > MAX_MANIFEST_BYTES:
                    raise InvalidArgument(f"manifest of {ref} is larger than {MAX_MANIFEST_BYTES} bytes")
                return raw, resp.headers.get("Content-Type", ""), resp.headers.get("Docker-Content-Digest", "")

        async def checked(ep: RegistryHost) -> tuple[bytes, str, str]:
            raw, ctype, claimed = await self._retrying(f"manifest {ref}", ep.host, lambda: once(ep))
            digest = sha256_digest(raw)
            if target.startswith("sha256:") and digest != target:
                raise DigestMismatch(f"manifest of {ref}: asked for {target}, content hashes to {digest}")
            if claimed and claimed != digest:
                raise DigestMismatch(f"manifest of {ref}: registry claims {claimed}, content hashes to {digest}")
            return raw, ctype, digest

        # A tag is resolved by the hosts that may resolve; a digest is content any puller may serve.
        return await self._each_host(ref, "pull" if target.startswith("sha256:") else "resolve", checked)

    async def fetch_blob(self, ref: Reference, desc: Descriptor, writer: BlobWriter,
                         progress: ProgressFn = no_progress) -> None:
        """Stream a blob into ``writer``, resuming with Range after a broken connection (from the next host
        of the reference's when one gives up)."""
        await self._each_host(ref, "pull", lambda ep: self._fetch_blob(ep, ref, desc, writer, progress))

    async def _fetch_blob(self, ep: RegistryHost, ref: Reference, desc: Descriptor, writer: BlobWriter,
                          progress: ProgressFn) -> None:
        host = ep.host
        scopes = [f"repository:{ref.path}:pull"]
        lid = short_id(desc.digest)
        step = self.options.progress_step
        for attempt in range(self.options.retries + 1):
            headers = {"Range": f"bytes={writer.offset}-"} if writer.offset else {}
            try:
                resp = await self._request("GET", ep, f"/v2/{ref.path}/blobs/{desc.digest}", scopes,
                                           headers=headers, ok=(200, 206))
                async with resp:
                    if resp.status == 200 and writer.offset:
                        await asyncio.to_thread(writer.reset)
                    last = writer.offset
                    async for chunk in resp.content.iter_chunked(1 << 20):
                        await asyncio.to_thread(writer.write, chunk)
                        if writer.offset - last >= step:
                            last = writer.offset
                            progress(ProgressEvent(lid, ProgressStatus.DOWNLOADING, writer.offset, desc.size))
                return
            except _NETWORK_ERRORS as exc:
                if attempt >= self.options.retries:
                    raise RegistryError(
                        f"blob {desc.digest} from {host}: {_describe(exc)} "
                        f"(gave up after {attempt + 1} attempts, {writer.offset}/{desc.size} bytes)"
                    ) from None
                progress(ProgressEvent(lid, ProgressStatus.RETRYING, writer.offset, desc.size,
                                       f"{_describe(exc)}; attempt {attempt + 2}"))
                await asyncio.sleep(self.options.backoff * (2 ** attempt))

    # -- push ---------------------------------------------------------------------------------
    async def blob_exists(self, ref: Reference, digest: str) -> bool:
        ep = self.direct(self.host_of(ref))
        scopes = [f"repository:{ref.path}:pull,push"]

        async def once() -> bool:
            try:
                resp = await self._request("HEAD", ep, f"/v2/{ref.path}/blobs/{digest}", scopes)
            except NotFound:
                return False
            resp.release()
            return True

        return bool(await self._retrying(f"blob {digest}", ep.host, once))

    async def mount_blob(self, ref: Reference, digest: str, from_repo: str) -> str | None:
        """Cross-repository mount; None if mounted, else the upload location the registry opened."""
        ep = self.direct(self.host_of(ref))
        scopes = [f"repository:{ref.path}:pull,push", f"repository:{from_repo}:pull"]
        q = urlencode({"mount": digest, "from": from_repo})
        resp = await self._request("POST", ep, f"/v2/{ref.path}/blobs/uploads/?{q}", scopes, ok=(201, 202))
        async with resp:
            if resp.status == 201:
                return None
            return urljoin(str(resp.url), resp.headers["Location"])

    async def upload_blob(self, ref: Reference, digest: str, path: Path, size: int,
                          location: str | None = None, progress: ProgressFn = no_progress) -> None:
        """Monolithic PUT for a small blob; chunked PATCHes then a closing PUT for a large one."""
        ep = self.direct(self.host_of(ref))
        scopes = [f"repository:{ref.path}:pull,push"]
        lid = short_id(digest)
        if location is None:
            resp = await self._request("POST", ep, f"/v2/{ref.path}/blobs/uploads/", scopes, ok=(202,))
            async with resp:
                location = urljoin(str(resp.url), resp.headers["Location"])
        chunk = self.options.chunk_size
        octet = {"Content-Type": "application/octet-stream"}
        if size <= chunk:
            data = await asyncio.to_thread(path.read_bytes)
            resp = await self._request("PUT", ep, _with_query(location, digest=digest), scopes,
                                       headers={**octet, "Content-Length": str(size)}, data=data, ok=(201,))
            resp.release()
            progress(ProgressEvent(lid, ProgressStatus.PUSHING, size, size))
            return
        offset = 0
        with open(path, "rb") as f:
            while offset < size:
                data = await asyncio.to_thread(f.read, chunk)
                end = offset + len(data) - 1
                resp = await self._request(
                    "PATCH", ep, location, scopes, data=data, ok=(202,),
                    headers={**octet, "Content-Range": f"{offset}-{end}", "Content-Length": str(len(data))},
                )
                async with resp:
                    location = urljoin(str(resp.url), resp.headers["Location"])
                offset = end + 1
                progress(ProgressEvent(lid, ProgressStatus.PUSHING, offset, size))
        resp = await self._request("PUT", ep, _with_query(location, digest=digest), scopes,
                                   headers={"Content-Length": "0"}, ok=(201,))
        resp.release()

    async def put_manifest(self, ref: Reference, raw: bytes, media_type: str, tag: str) -> str:
        ep = self.direct(self.host_of(ref))
        scopes = [f"repository:{ref.path}:pull,push"]
        resp = await self._request("PUT", ep, f"/v2/{ref.path}/manifests/{tag}", scopes,
                                   headers={"Content-Type": media_type}, data=raw, ok=(201, 200))
        async with resp:
            return resp.headers.get("Docker-Content-Digest") or sha256_digest(raw)

    async def catalog(self, host: str) -> AsyncIterator[str]:  # pragma: no cover - convenience
        resp = await self._request("GET", self.direct(host), "/v2/_catalog", ["registry:catalog:*"])
        async with resp:
            for name in (await resp.json()).get("repositories", []):
                yield name


def _registry_message(body: bytes) -> str:
    """The first message of a registry's (or token server's) JSON error body, if it has one."""
    try:
        doc = json.loads(body)
        errors = doc.get("errors") if isinstance(doc, dict) else None
        if errors and isinstance(errors[0], dict):
            return str(errors[0].get("message") or errors[0].get("code") or "")
        if isinstance(doc, dict):
            return str(doc.get("details") or doc.get("error") or "")
    except (ValueError, UnicodeDecodeError):
        pass
    return ""


def _joined(headers: tuple[tuple[str, str], ...]) -> dict[str, str]:
    """hosts.toml's headers, a name given several values sent once with them comma-joined (as HTTP allows)."""
    out: dict[str, str] = {}
    for name, value in headers:
        out[name] = f"{out[name]}, {value}" if name in out else value
    return out


def _plain_http_answer(exc: BaseException) -> bool:
    """TLS spoken to a plain http server: OpenSSL reads the HTTP answer as a broken record."""
    text = str(exc).upper()
    return any(word in text for word in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG",
                                         "HTTP_REQUEST"))


def _url_host(url: str) -> str:
    return url.split("://", 1)[-1].split("/", 1)[0]


def _with_query(location: str, **params: str) -> str:
    return location + ("&" if "?" in location else "?") + urlencode(params)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out waiting for the registry"
    return f"{type(exc).__name__}: {exc}"


def _status_error(status: int, what: str, body: str) -> SkiffError:
    msg = f"{what}: HTTP {status}: {body.strip()}"
    if status == 404:
        return NotFound(msg)
    if status in (401, 403):
        return AuthError(msg)
    if status in (400, 405, 413, 415):
        return InvalidArgument(msg)
    return RegistryError(msg)
