"""Where a pull reaches a registry: containerd's ``hosts.toml`` and Docker's daemon.json settings, as
one ordered list of hosts to try.

containerd's registry configuration (its docs/hosts.md) lives in ``<certs.d>/<namespace>/hosts.toml``,
the same folder as Docker's certificates (``SKIFF_CERTS_D``, default ``<etc>/certs.d``); the namespace
is the registry of the reference (``docker.io``, ``registry.k8s.io``, ``127.0.0.1:5000``), and
``_default/hosts.toml`` serves a namespace without a folder of its own::

    server = "https://registry.k8s.io"        # the upstream, tried last (default: https://<namespace>)

    [host."http://127.0.0.1:5000"]            # tried first, in the file's order
      capabilities = ["pull", "resolve"]      # resolve: tag to digest; pull: by digest; push
      skip_verify = true                      # https without checking the certificate
      ca = "/etc/certs/mirror.pem"            # or a list; relative paths from the namespace's folder
      client = [["client.cert", "client.key"]]  # a path (cert and key in one), a list of them, or pairs
      override_path = false                   # true: the URL's path is the API root, no /v2 added
      [host."http://127.0.0.1:5000".header]
        x-custom = "value"                    # or a list of values

Each host's API root is its URL's path with ``/v2`` appended (unless it already ends so, or
``override_path``). Keys containerd 1.6 does not know are ignored as it ignores them; a capability
it does not know, a malformed value or TOML is an error naming the file.

Without a hosts.toml, Docker's rules: a Docker Hub pull tries daemon.json's ``registry-mirrors`` in
order, then the Hub; every other registry is reached directly. A hosts.toml, when there is one, is
the whole of its namespace's routing (``registry-mirrors`` do not add to it).

``insecure-registries`` (``host:port`` or a CIDR of IP addresses) marks hosts that may be reached
without verifying TLS and over plain http, as dockerd's; loopback registries may fall back to plain
http too (dockerd's default 127.0.0.0/8), but their certificates are still verified.

Kept free of third-party imports.
"""

from __future__ import annotations

import ipaddress
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from services.common.errors import InvalidArgument

HOSTS_FILE = "hosts.toml"
DEFAULT_NAMESPACE = "_default"
DOCKER_HUB_NAMESPACE = "docker.io"
DOCKER_HUB_HOST = "registry-1.docker.io"
CAPABILITIES = frozenset({"pull", "resolve", "push"})
MIRROR_CAPABILITIES = frozenset({"pull", "resolve"})


class HostsError(InvalidArgument):
    """A hosts.toml that cannot be used: the message names the file and the key."""


@dataclass(frozen=True, slots=True)
class RegistryHost:
    """One place to send a namespace's requests to."""

    host: str  # host[:port]
    # "https" or "http"; None: https, or plain http when https does not answer (loopback, insecure).
    scheme: str | None = None
    path: str = "/v2"  # the API root
    capabilities: frozenset[str] = CAPABILITIES
    skip_verify: bool = False
    insecure: bool = False  # daemon.json's insecure-registries: skip_verify and plain http allowed
    ca: tuple[Path, ...] = ()
    client: tuple[tuple[Path, Path | None], ...] = ()  # (certificate, key or None: in the same file)
    headers: tuple[tuple[str, str], ...] = ()
    upstream: bool = True  # the namespace's own server (False: a mirror)
    namespace: str = ""  # the registry of the references it serves (docker.io, registry.k8s.io, ...)

    @property
    def key(self) -> str:
        """What tells two hosts apart (auth state and TLS settings are kept per key)."""
        return f"{self.scheme or 'auto'}://{self.host}{self.path}#{int(self.skip_verify or self.insecure)}"

    def describe(self) -> str:
        return f"{self.scheme or 'https'}://{self.host}"

    def can(self, capability: str) -> bool:
        return capability in self.capabilities


@dataclass(frozen=True, slots=True)
class DockerSettings:
    """daemon.json's registry keys, as the daemon has them in force."""

    mirrors: tuple[str, ...] = ()
    insecure: tuple[str, ...] = ()
    loopback_http: bool = True  # loopback registries may fall back to plain http (Docker's default)


def upstream_host(namespace: str) -> str:
    """The namespace's own API host: Docker Hub's is registry-1.docker.io."""
    return DOCKER_HUB_HOST if namespace == DOCKER_HUB_NAMESPACE else namespace


def is_loopback(host: str) -> bool:
    name = _host_name(host)
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def is_insecure(host: str, insecure: Iterable[str]) -> bool:
    """dockerd's rule: ``host[:port]`` listed as is, or its IP address inside a listed CIDR (names are
    not resolved here: list them as ``name:port``)."""
    try:
        address = ipaddress.ip_address(_host_name(host))
    except ValueError:
        address = None
    for entry in insecure:
        if entry == host or entry == _host_name(host):
            return True
        if "/" in entry and address is not None:
            try:
                if address in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                continue
    return False


def _host_name(host: str) -> str:
    """``host`` of ``host[:port]`` (``[v6]:port`` too)."""
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    if host.count(":") == 1:
        return host.rsplit(":", 1)[0]
    return host


def hosts_file(certs_d: Path, namespace: str) -> Path | None:
    """``<certs.d>/<namespace>/hosts.toml``, else ``<certs.d>/_default/hosts.toml``; None when neither is."""
    if not namespace or "/" in namespace or namespace in (".", ".."):
        raise InvalidArgument(f"invalid registry host {namespace!r}")
    for name in (namespace, DEFAULT_NAMESPACE):
        path = certs_d / name / HOSTS_FILE
        if path.is_file():
            return path
    return None


def load_hosts(path: Path, namespace: str) -> list[RegistryHost]:
    """The hosts of one hosts.toml (blocking file work: call it from a thread)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise HostsError(f"{path}: {exc.strerror}") from None
    return parse_hosts(text, namespace, path.parent, str(path))


def parse_hosts(text: str, namespace: str, folder: Path, source: str = HOSTS_FILE) -> list[RegistryHost]:
    """The ``[host."..."]`` entries in the file's order, then the server (when it has a capability)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise HostsError(f"{source}: invalid TOML: {exc}") from None
    server = doc.get("server", f"https://{upstream_host(namespace)}")
    if not isinstance(server, str) or not server:
        raise HostsError(f"{source}: server: expected a URL string, got {server!r}")
    table = doc.get("host", {})
    if not isinstance(table, dict):
        raise HostsError(f"{source}: host: expected tables [host.\"<url>\"]")
    hosts = []
    for url, spec in table.items():
        if not isinstance(spec, dict):
            raise HostsError(f"{source}: host.{url!r}: expected a table")
        hosts.append(_host(url, spec, folder, f"{source}: host.{url!r}", upstream=False, namespace=namespace))
    top = _host(server, doc, folder, f"{source}: server", upstream=True, namespace=namespace)
    if "server" not in doc and is_loopback(top.host):
        top = replace(top, scheme=None)  # as without a hosts.toml: https, else plain http on loopback
    if top.capabilities:
        hosts.append(top)
    return hosts


def _host(url: str, spec: dict[str, Any], folder: Path, where: str, *, upstream: bool,
          namespace: str) -> RegistryHost:
    if "://" not in url:
        url = "https://" + url
    scheme, _, rest = url.partition("://")
    if scheme not in ("http", "https"):
        raise HostsError(f"{where}: unsupported scheme {scheme!r} (http or https)")
    host, slash, path = rest.partition("/")
    if not host:
        raise HostsError(f"{where}: no host in {url!r}")
    override = _bool(spec, "override_path", where)
    path = ("/" + path.strip("/")) if slash and path.strip("/") else ""
    if not override and not path.endswith("/v2"):
        path += "/v2"
    caps = spec.get("capabilities", sorted(CAPABILITIES))
    if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
        raise HostsError(f"{where}: capabilities: expected a list of strings, got {caps!r}")
    unknown = sorted(set(caps) - CAPABILITIES)
    if unknown:
        raise HostsError(f"{where}: capabilities: unknown capability {unknown[0]!r} (pull, resolve, push)")
    return RegistryHost(
        host=host, scheme=scheme, path=path, capabilities=frozenset(caps),
        skip_verify=_bool(spec, "skip_verify", where), ca=_paths(spec.get("ca"), folder, f"{where}: ca"),
        client=_clients(spec.get("client"), folder, f"{where}: client"),
        headers=_headers(spec.get("header"), f"{where}: header"), upstream=upstream, namespace=namespace,
    )


def _bool(spec: dict[str, Any], key: str, where: str) -> bool:
    value = spec.get(key, False)
    if not isinstance(value, bool):
        raise HostsError(f"{where}: {key}: expected true or false, got {value!r}")
    return value


def _path(value: Any, folder: Path, where: str) -> Path:
    if not isinstance(value, str) or not value:
        raise HostsError(f"{where}: expected a path, got {value!r}")
    path = Path(value)
    return path if path.is_absolute() else folder / path


def _paths(value: Any, folder: Path, where: str) -> tuple[Path, ...]:
    if value is None:
        return ()
    items = value if isinstance(value, list) else [value]
    return tuple(_path(v, folder, where) for v in items)


def _clients(value: Any, folder: Path, where: str) -> tuple[tuple[Path, Path | None], ...]:
    """A path (certificate and key in one file), a list of paths, or a list of [certificate, key] pairs."""
    if value is None:
        return ()
    items = value if isinstance(value, list) else [value]
    out: list[tuple[Path, Path | None]] = []
    for item in items:
        if isinstance(item, list):
            if len(item) not in (1, 2):
                raise HostsError(f"{where}: expected [certificate, key], got {item!r}")
            key = _path(item[1], folder, where) if len(item) == 2 and item[1] else None
            out.append((_path(item[0], folder, where), key))
        else:
            out.append((_path(item, folder, where), None))
    return tuple(out)


def _headers(value: Any, where: str) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise HostsError(f"{where}: expected a table of name = value")
    out = []
    for name, v in value.items():
        values = v if isinstance(v, list) else [v]
        if not all(isinstance(x, str) for x in values):
            raise HostsError(f"{where}: {name}: expected a string or a list of strings, got {v!r}")
        out += [(name, x) for x in values]
    return tuple(out)


def docker_hosts(namespace: str, settings: DockerSettings) -> list[RegistryHost]:
    """Docker's routing: the Hub's mirrors (registry-mirrors, in order), then the registry itself."""
    hosts: list[RegistryHost] = []
    if namespace == DOCKER_HUB_NAMESPACE:
        for mirror in settings.mirrors:
            scheme, _, rest = mirror.partition("://")
            host, _, path = rest.partition("/")
            path = ("/" + path.strip("/")) if path.strip("/") else ""
            hosts.append(RegistryHost(
                host=host, scheme=scheme, path=path if path.endswith("/v2") else path + "/v2",
                capabilities=MIRROR_CAPABILITIES, insecure=is_insecure(host, settings.insecure), upstream=False,
                namespace=namespace))
    host = upstream_host(namespace)
    insecure = is_insecure(host, settings.insecure)
    auto = insecure or (settings.loopback_http and is_loopback(host))
    hosts.append(RegistryHost(host=host, scheme=None if auto else "https", insecure=insecure, namespace=namespace))
    return hosts


def resolve_hosts(certs_d: Path | None, namespace: str, settings: DockerSettings) -> list[RegistryHost]:
    """Where to send a namespace's requests, in order (blocking file work: call it from a thread).

    A hosts.toml host whose own host is in insecure-registries is insecure too."""
    path = hosts_file(certs_d, namespace) if certs_d is not None else None
    if path is None:
        return docker_hosts(namespace, settings)
    return [replace(h, insecure=is_insecure(h.host, settings.insecure)) for h in load_hosts(path, namespace)]
