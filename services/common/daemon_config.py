"""``<etc>/daemon.json``: the keys of Docker's daemon.json that apply to Skiff, checked as a whole.

Every service reads the same file (``--config-file``, default ``<etc>/daemon.json``; a missing
default file is an empty configuration, a missing named one an error) and refuses to start on an
unknown key or a bad value, naming the key, as dockerd does. Each takes the keys it serves:

- apiserver: ``hosts``, ``tls``, ``tlsverify``, ``tlscacert``, ``tlscert``, ``tlskey``;
- daemon: ``default-runtime``/``runtimes``, ``log-driver``/``log-opts`` (defaults of a container's
  LogConfig), ``default-ulimits`` (merged into a new container's), ``dns`` (a container's resolv.conf
  when it names none), ``default-address-pools``, ``bip`` and ``mtu`` (the default bridge),
  ``cgroup-parent``, ``labels``, ``debug``; it also publishes the configuration in force
  (``<run>/daemon/config.json``) that ``docker info`` shows;
- ``data-root``/``exec-root`` must agree with the prefix's ``<lib>``/``<run>`` (Skiff moves both
  with ``--root``).

``registry-mirrors``, ``insecure-registries`` and ``max-concurrent-downloads`` are shown by ``docker info``
and used by pulls: the daemon puts them on each pull (push, login) request to highlevel
(services/daemon/images.py), so a reload applies from the next one; services/common/registry_hosts.py
says what they mean.

SIGHUP reloads the file: the keys dockerd's ``daemon/reload.go`` reloads (RELOADABLE) take effect;
a bad file is logged and the configuration in force is kept, as dockerd does.

Kept free of third-party imports.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from services.common.paths import Paths

FILE_NAME = "daemon.json"

# dockerd's reload.go: what a SIGHUP changes (of the keys Skiff knows).
RELOADABLE = frozenset({
    "debug", "labels", "max-concurrent-downloads", "default-runtime", "runtimes",
    "registry-mirrors", "insecure-registries",
})

# Docker's names of the runtime every engine has; both mean Skiff's own (or --runtime's) runtime.
BUILTIN_RUNTIMES = ("runc", "io.containerd.runc.v2")
LOG_DRIVERS = ("json-file", "local", "none")
ULIMIT_NAMES = frozenset({"core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice", "nofile",
                          "nproc", "rss", "rtprio", "rttime", "sigpending", "stack"})
_RUNTIME_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ConfigError(Exception):
    """The file cannot be used: its message names the file and the key."""


@dataclass(frozen=True, slots=True)
class AddressPool:
    base: str  # an IPv4 network
    size: int  # the prefix length of each network cut from it

    def subnets(self) -> list[str]:
        return [str(n) for n in ipaddress.IPv4Network(self.base).subnets(new_prefix=self.size)]


@dataclass(frozen=True, slots=True)
class Runtime:
    path: str
    runtime_args: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Ulimit:
    name: str
    soft: int
    hard: int


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    source: str = ""  # the file read ("" when there was none)
    hosts: tuple[str, ...] = ()
    data_root: str = ""
    exec_root: str = ""
    debug: bool = False
    default_runtime: str = "runc"
    runtimes: dict[str, Runtime] = field(default_factory=dict)  # beside the built-in ones
    log_driver: str = "json-file"
    log_opts: dict[str, str] = field(default_factory=dict)
    default_address_pools: tuple[AddressPool, ...] = ()
    bip: str = ""
    mtu: int = 0
    dns: tuple[str, ...] = ()
    registry_mirrors: tuple[str, ...] = ()
    insecure_registries: tuple[str, ...] = ()
    default_ulimits: dict[str, Ulimit] = field(default_factory=dict)
    cgroup_parent: str = ""
    max_concurrent_downloads: int = 3
    labels: tuple[str, ...] = ()
    tls: bool | None = None  # None: not said (dockerd's default: on when tlsverify is)
    tlsverify: bool = False
    tlscacert: str = ""
    tlscert: str = ""
    tlskey: str = ""

    def runtime_names(self) -> list[str]:
        return [*BUILTIN_RUNTIMES, *self.runtimes]

    def reloaded(self, new: DaemonConfig) -> DaemonConfig:
        """This configuration with ``new``'s reloadable keys (the others need a restart)."""
        return replace(self, **{_attr(key): getattr(new, _attr(key)) for key in RELOADABLE})

    def in_force(self) -> dict[str, Any]:
        """The configuration as JSON (daemon.json's key names), for docker info."""
        out = {key: getattr(self, _attr(key)) for key in KEYS}
        out["runtimes"] = {name: {"path": r.path, **({"runtimeArgs": list(r.runtime_args)} if r.runtime_args else {})}
                           for name, r in self.runtimes.items()}
        out["default-ulimits"] = {name: {"Name": name, "Soft": u.soft, "Hard": u.hard}
                                  for name, u in self.default_ulimits.items()}
        out["default-address-pools"] = [asdict(p) for p in self.default_address_pools]
        out["source"] = self.source
        return json.loads(json.dumps(out))


def _attr(key: str) -> str:
    return key.replace("-", "_")


def _fail(key: str, message: str) -> ConfigError:
    return ConfigError(f"{key}: {message}")


def _string(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise _fail(key, f"expected a string, got {json.dumps(value)}")
    return value


def _strings(key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail(key, f"expected a list of strings, got {json.dumps(value)}")
    return tuple(value)


def _bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(key, f"expected true or false, got {json.dumps(value)}")
    return value


def _int(key: str, value: Any, minimum: int = 0) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise _fail(key, f"expected an integer of at least {minimum}, got {json.dumps(value)}")
    return value


def _object(key: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(key, f"expected an object, got {json.dumps(value)}")
    return value


def _hosts(key: str, value: Any) -> tuple[str, ...]:
    hosts = _strings(key, value)
    for host in hosts:
        parse_host(host, key)
    return hosts


def parse_host(host: str, key: str = "hosts") -> tuple[str, str]:
    """``unix:///path``, ``tcp://host:port`` (or ``fd://``) as (scheme, address); ConfigError otherwise."""
    scheme, sep, rest = host.partition("://")
    if not sep or scheme not in ("unix", "tcp", "fd"):
        raise _fail(key, f"invalid address {host!r}: expected unix:///path, tcp://host:port or fd://")
    if scheme == "unix" and not rest.startswith("/"):
        raise _fail(key, f"invalid address {host!r}: a unix socket needs an absolute path")
    if scheme == "tcp":
        address, colon, port = rest.rstrip("/").rpartition(":")
        if not colon or not port.isdigit() or not 0 < int(port) < 65536:
            raise _fail(key, f"invalid address {host!r}: expected tcp://host:port")
        if address.startswith("[") and address.endswith("]"):
            address = address[1:-1]
        try:
            ipaddress.ip_address(address or "0.0.0.0")
        except ValueError:
            raise _fail(key, f"invalid address {host!r}: the host must be an IP address") from None
        return scheme, f"{address or '0.0.0.0'}:{port}"
    return scheme, rest


def _runtimes(key: str, value: Any) -> dict[str, Runtime]:
    out: dict[str, Runtime] = {}
    for name, spec in _object(key, value).items():
        if name in BUILTIN_RUNTIMES:
            raise _fail(key, f"runtime name '{name}' is reserved")
        if not _RUNTIME_NAME.match(name):
            raise _fail(key, f"invalid runtime name {name!r}")
        spec = _object(f"{key}.{name}", spec)
        unknown = sorted(set(spec) - {"path", "runtimeArgs"})
        if unknown:
            raise _fail(f"{key}.{name}", f"unknown field(s): {', '.join(unknown)}")
        path = _string(f"{key}.{name}.path", spec.get("path", ""))
        if not path:
            raise _fail(f"{key}.{name}", "a runtime needs a path")
        args = _strings(f"{key}.{name}.runtimeArgs", spec.get("runtimeArgs", []))
        if args:
            # highlevel names a task's runtime by name or path only.
            raise _fail(f"{key}.{name}.runtimeArgs", "not supported by Skiff: give a path to a wrapper script")
        out[name] = Runtime(path, args)
    return out


def _log_driver(key: str, value: Any) -> str:
    driver = _string(key, value)
    if driver not in LOG_DRIVERS:
        raise _fail(key, f"unknown log driver {driver!r} (Skiff has {', '.join(LOG_DRIVERS)})")
    return driver


def _log_opts(key: str, value: Any) -> dict[str, str]:
    opts = _object(key, value)
    for name, v in opts.items():
        _string(f"{key}.{name}", v)
    return dict(opts)


def _pools(key: str, value: Any) -> tuple[AddressPool, ...]:
    if not isinstance(value, list):
        raise _fail(key, f"expected a list of {{\"base\": ..., \"size\": ...}}, got {json.dumps(value)}")
    pools = []
    for i, item in enumerate(value):
        item = _object(f"{key}[{i}]", item)
        unknown = sorted(set(item) - {"base", "size"})
        if unknown:
            raise _fail(f"{key}[{i}]", f"unknown field(s): {', '.join(unknown)}")
        base = _string(f"{key}[{i}].base", item.get("base"))
        try:
            net = ipaddress.IPv4Network(base)
        except ValueError as exc:
            raise _fail(f"{key}[{i}].base", f"invalid IPv4 network {base!r}: {exc}") from None
        size = _int(f"{key}[{i}].size", item.get("size"), 1)
        if not net.prefixlen <= size <= 30:
            raise _fail(f"{key}[{i}].size", f"{size} must be between the base's prefix length "
                                            f"({net.prefixlen}) and 30")
        pools.append(AddressPool(str(net), size))
    return tuple(pools)


def _bip(key: str, value: Any) -> str:
    text = _string(key, value)
    try:
        iface = ipaddress.IPv4Interface(text)
    except ValueError:
        raise _fail(key, f"invalid bridge address {text!r}: expected an IPv4 address with its prefix length "
                         "(e.g. 192.168.1.1/24)") from None
    if "/" not in text or iface.ip == iface.network.network_address:
        raise _fail(key, f"invalid bridge address {text!r}: expected the bridge's address and prefix length")
    return text


def _dns(key: str, value: Any) -> tuple[str, ...]:
    servers = _strings(key, value)
    for server in servers:
        try:
            ipaddress.ip_address(server)
        except ValueError:
            raise _fail(key, f"{server!r} is not an IP address") from None
    return servers


def _mirrors(key: str, value: Any) -> tuple[str, ...]:
    mirrors = _strings(key, value)
    for mirror in mirrors:
        if not re.match(r"^https?://[^/]+/?$", mirror):
            raise _fail(key, f"invalid mirror {mirror!r}: expected http(s)://host[:port] with no path")
    return mirrors


def _insecure(key: str, value: Any) -> tuple[str, ...]:
    registries = _strings(key, value)
    for registry in registries:
        if "://" in registry:
            raise _fail(key, f"insecure registry {registry} should not contain '://'")
    return registries


def _ulimits(key: str, value: Any) -> dict[str, Ulimit]:
    out: dict[str, Ulimit] = {}
    for name, spec in _object(key, value).items():
        if name not in ULIMIT_NAMES:
            raise _fail(key, f"invalid ulimit type: {name}")
        spec = _object(f"{key}.{name}", spec)
        soft = _int(f"{key}.{name}.Soft", spec.get("Soft"))
        hard = _int(f"{key}.{name}.Hard", spec.get("Hard"))
        if soft > hard:
            raise _fail(f"{key}.{name}", f"soft limit {soft} is above the hard limit {hard}")
        out[name] = Ulimit(name, soft, hard)
    return out


def _cgroup_parent(key: str, value: Any) -> str:
    text = _string(key, value).strip("/")
    if not text or ".." in text.split("/"):
        raise _fail(key, f"invalid cgroup parent {value!r}")
    return text


def _labels(key: str, value: Any) -> tuple[str, ...]:
    labels = _strings(key, value)
    for label in labels:
        if "=" not in label or label.startswith("="):
            raise _fail(key, f"bad attribute format: {label}")  # dockerd's words for a label without '='
    return labels


def _path(key: str, value: Any) -> str:
    text = _string(key, value)
    if not text.startswith("/"):
        raise _fail(key, f"{text!r} is not an absolute path")
    return text


PARSERS = {
    "hosts": _hosts, "data-root": _path, "exec-root": _path, "debug": _bool,
    "default-runtime": _string, "runtimes": _runtimes,
    "log-driver": _log_driver, "log-opts": _log_opts,
    "default-address-pools": _pools, "bip": _bip, "mtu": lambda k, v: _int(k, v, 68), "dns": _dns,
    "registry-mirrors": _mirrors, "insecure-registries": _insecure, "default-ulimits": _ulimits,
    "cgroup-parent": _cgroup_parent, "max-concurrent-downloads": lambda k, v: _int(k, v, 1), "labels": _labels,
    "tls": _bool, "tlsverify": _bool, "tlscacert": _path, "tlscert": _path, "tlskey": _path,
}
KEYS = tuple(PARSERS)


def parse(data: Any, source: str = "") -> DaemonConfig:
    """The configuration of a decoded daemon.json; ConfigError naming the first bad key."""
    if not isinstance(data, dict):
        raise ConfigError("the file must hold a JSON object")
    unknown = sorted(set(data) - set(PARSERS))
    if unknown:
        raise ConfigError(f"the following directives don't match any configuration option: {', '.join(unknown)}")
    values = {_attr(key): PARSERS[key](key, value) for key, value in data.items()}
    config = DaemonConfig(source=source, **values)
    if config.default_runtime not in config.runtime_names():
        raise _fail("default-runtime", f"unknown runtime {config.default_runtime!r} (known: "
                                        f"{', '.join(config.runtime_names())})")
    return config


def default_path(paths: Paths) -> Path:
    return paths.etc / FILE_NAME


def load(paths: Paths, named: str | os.PathLike[str] | None = None) -> DaemonConfig:
    """The file named (``--config-file``) or ``<etc>/daemon.json``; ConfigError with dockerd's preamble.

    A missing default file is an empty configuration; a missing named one is an error."""
    path = Path(named) if named else default_path(paths)
    try:
        text = path.read_text()
    except FileNotFoundError:
        if named:
            raise ConfigError(f"unable to configure the Skiff daemon with file {path}: no such file") from None
        return DaemonConfig()
    except OSError as exc:
        raise ConfigError(f"unable to configure the Skiff daemon with file {path}: {exc.strerror}") from None
    try:
        data = json.loads(text) if text.strip() else {}
        config = parse(data, str(path))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"unable to configure the Skiff daemon with file {path}: invalid JSON: {exc}") from None
    except ConfigError as exc:
        raise ConfigError(f"unable to configure the Skiff daemon with file {path}: {exc}") from None
    _check_roots(config, paths, path)
    return config


def _check_roots(config: DaemonConfig, paths: Paths, path: Path) -> None:
    for key, have in (("data-root", paths.lib), ("exec-root", paths.run)):
        want = getattr(config, _attr(key))
        if want and Path(want) != have:
            raise ConfigError(f"unable to configure the Skiff daemon with file {path}: {key}: {want} differs from "
                              f"{have}; Skiff places <lib> and <run> under its --root prefix: start it with the "
                              "prefix that gives these folders")


def conflicts(config: DaemonConfig, flags: dict[str, Any]) -> None:
    """dockerd refuses a directive given both as a flag and in the file."""
    both = sorted(key for key, value in flags.items() if value is not None and key in _given(config))
    if both:
        raise ConfigError(f"unable to configure the Skiff daemon with file {config.source}: the following "
                          f"directives are specified both as a flag and in the configuration file: {', '.join(both)}")


def _given(config: DaemonConfig) -> set[str]:
    if not config.source:
        return set()
    try:
        return set(json.loads(Path(config.source).read_text() or "{}"))
    except (OSError, ValueError):
        return set()


class LiveConfig:
    """The configuration a service runs with, swapped whole on a reload (readers take ``current``)."""

    def __init__(self, paths: Paths, named: str | os.PathLike[str] | None = None,
                 current: DaemonConfig | None = None) -> None:
        self.paths = paths
        self.named = named
        self.current = current if current is not None else load(paths, named)

    def reload(self) -> DaemonConfig:
        """The file read again and its reloadable keys in force; ConfigError leaves the current one."""
        self.current = self.current.reloaded(load(self.paths, self.named))
        return self.current


def add_config_file_flag(parser: Any) -> None:
    """``--config-file``, as dockerd's (an argparse parser)."""
    parser.add_argument("--config-file", metavar="FILE",
                        help="daemon configuration file (default: <etc>/daemon.json, i.e. /etc/skiff/daemon.json)")


def parse_flag_bool(text: str) -> bool:
    """Go's flag booleans: ``--tls=false``, ``--tlsverify=1``."""
    lowered = text.lower()
    if lowered in ("1", "t", "true"):
        return True
    if lowered in ("0", "f", "false"):
        return False
    raise ValueError(f"invalid boolean {text!r}")


def with_flags(config: DaemonConfig, flags: dict[str, Any]) -> DaemonConfig:
    """``config`` with the flags given (not None); ConfigError for a key set both ways, as dockerd."""
    conflicts(config, flags)
    return replace(config, **{_attr(k): v for k, v in flags.items() if v is not None})


def apply_runtime_default(config: DaemonConfig, host: Any) -> None:
    """A new container's HostConfig.Runtime (the daemon's gen type), as dockerd's create: the default
    runtime when none is named, and a name the daemon knows."""
    from services.common.errors import InvalidArgument

    host.runtime = host.runtime or config.default_runtime
    if host.runtime not in config.runtime_names():
        raise InvalidArgument(f"Unknown runtime specified {host.runtime}")


def apply_log_defaults(config: DaemonConfig, host: Any) -> None:
    """A new container's log settings, as dockerd's mergeAndVerifyLogConfig: the daemon's driver when
    none is named, and its options beside the container's when the drivers match."""
    host.log_driver = host.log_driver or config.log_driver
    if host.log_driver == config.log_driver:
        for key, value in config.log_opts.items():
            host.log_opts.setdefault(key, value)


def apply_ulimit_defaults(config: DaemonConfig, host: Any, make: Any) -> None:
    """dockerd's mergeUlimits: each of default-ulimits the container does not set itself, added
    (``make(name=, soft=, hard=)`` builds the daemon's Ulimit message)."""
    own = {u.name for u in host.ulimits}
    for name, limit in config.default_ulimits.items():
        if name not in own:
            host.ulimits.append(make(name=name, soft=limit.soft, hard=limit.hard))


def runtime_for(config: DaemonConfig, name: str, builtin: str) -> str:
    """What highlevel runs for Docker's runtime ``name``: runc's names are the engine's own (``builtin``)."""
    extra = config.runtimes.get(name)
    if extra is None and name and name not in BUILTIN_RUNTIMES:
        from services.common.errors import FailedPrecondition

        # Gone from daemon.json since the create (a reload): dockerd fails the start the same way.
        raise FailedPrecondition(f"unknown or invalid runtime name: {name}")
    return extra.path if extra is not None else builtin


def bridge_mtu(config: DaemonConfig, network: str, default: int) -> int:
    """daemon.json's mtu for the default ``bridge`` network (as dockerd's --mtu); ``default`` elsewhere."""
    return (config.mtu or default) if network == "bridge" else default


def subnet_candidates(config: DaemonConfig) -> tuple[str, ...]:
    """The subnets a new network may get, in order: default-address-pools' cuts; () for the built-in list."""
    return tuple(subnet for pool in config.default_address_pools for subnet in pool.subnets())


def in_force_path(paths: Paths) -> Path:
    """Where the daemon publishes the configuration in force (docker info reads it)."""
    return paths.run / "daemon" / "config.json"


def publish(paths: Paths, config: DaemonConfig) -> None:
    from services.common.atomic import atomic_write

    in_force_path(paths).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(in_force_path(paths), json.dumps(config.in_force(), indent=1).encode(), durable=False, mode=0o644)


def read_in_force(paths: Paths) -> DaemonConfig | None:
    """The configuration the daemon published; None before it did (or when unreadable)."""
    try:
        data = json.loads(in_force_path(paths).read_text())
        source = data.pop("source", "")
        defaults = DaemonConfig().in_force()
        return parse({k: v for k, v in data.items() if k in defaults and v != defaults[k]}, source)
    except (OSError, ValueError, ConfigError):
        return None
