"""daemon.json's model (services/common/daemon_config.py) and the apiserver's listener plan
(services/common/api_endpoints.py): what is accepted, what is refused with which words, what a reload
changes, and the published configuration read back as it was."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from services.common import api_endpoints, daemon_config
from services.common.daemon_config import ConfigError, DaemonConfig, LiveConfig, parse
from services.common.paths import resolve_paths

FULL: dict[str, Any] = {
    "hosts": ["unix:///run/x.sock", "tcp://127.0.0.1:2376"],
    "debug": True,
    "default-runtime": "fast",
    "runtimes": {"fast": {"path": "/usr/bin/crun"}},
    "log-driver": "local",
    "log-opts": {"max-size": "10m"},
    "default-address-pools": [{"base": "10.10.0.0/16", "size": 24}],
    "bip": "10.20.0.1/24",
    "mtu": 1400,
    "dns": ["192.0.2.1"],
    "registry-mirrors": ["https://mirror.example:5000"],
    "insecure-registries": ["10.0.0.0/8", "myreg:5000"],
    "default-ulimits": {"nofile": {"Name": "nofile", "Soft": 1024, "Hard": 2048}},
    "cgroup-parent": "skiff-x",
    "max-concurrent-downloads": 5,
    "labels": ["a=b"],
    "tlsverify": True,
    "tlscacert": "/ca.pem",
    "tlscert": "/cert.pem",
    "tlskey": "/key.pem",
}


def test_every_key_parsed() -> None:
    config = parse(FULL)
    assert config.runtime_names() == ["runc", "io.containerd.runc.v2", "fast"]
    assert config.default_address_pools[0].subnets()[:2] == ["10.10.0.0/24", "10.10.1.0/24"]
    assert daemon_config.subnet_candidates(config)[0] == "10.10.0.0/24"
    assert config.default_ulimits["nofile"].soft == 1024 and config.mtu == 1400 and config.debug


@pytest.mark.parametrize(("data", "words"), [
    ({"nosuch": 1, "other": 2}, "the following directives don't match any configuration option: nosuch, other"),
    ({"mtu": True}, "mtu: expected an integer of at least 68, got true"),
    ({"mtu": 10}, "mtu: expected an integer of at least 68, got 10"),
    ({"labels": "a=b"}, 'labels: expected a list of strings, got "a=b"'),
    ({"labels": ["ab"]}, "labels: bad attribute format: ab"),
    ({"hosts": ["http://x"]}, "hosts: invalid address 'http://x'"),
    ({"hosts": ["tcp://name:2376"]}, "the host must be an IP address"),
    ({"runtimes": {"runc": {"path": "/x"}}}, "runtimes: runtime name 'runc' is reserved"),
    ({"runtimes": {"x": {}}}, "runtimes.x: a runtime needs a path"),
    ({"runtimes": {"x": {"path": "/x", "runtimeArgs": ["--debug"]}}}, "runtimes.x.runtimeArgs: not supported"),
    ({"default-runtime": "nosuch"}, "default-runtime: unknown runtime 'nosuch'"),
    ({"log-driver": "syslog"}, "log-driver: unknown log driver 'syslog'"),
    ({"default-address-pools": [{"base": "10.0.0.0/16", "size": 8}]}, "default-address-pools[0].size: 8 must be"),
    ({"default-address-pools": [{"base": "10.0.0.0/16"}]}, "default-address-pools[0].size: expected an integer"),
    ({"bip": "10.0.0.0/24"}, "bip: invalid bridge address '10.0.0.0/24'"),
    ({"dns": ["dns.example"]}, "dns: 'dns.example' is not an IP address"),
    ({"registry-mirrors": ["mirror.example"]}, "registry-mirrors: invalid mirror 'mirror.example'"),
    ({"insecure-registries": ["http://x"]}, "insecure registry http://x should not contain '://'"),
    ({"default-ulimits": {"files": {"Soft": 1, "Hard": 1}}}, "default-ulimits: invalid ulimit type: files"),
    ({"default-ulimits": {"nofile": {"Soft": 3, "Hard": 2}}}, "soft limit 3 is above the hard limit 2"),
    ({"cgroup-parent": "../x"}, "cgroup-parent: invalid cgroup parent '../x'"),
    ({"max-concurrent-downloads": 0}, "max-concurrent-downloads: expected an integer of at least 1"),
    ({"tlscert": "cert.pem"}, "tlscert: 'cert.pem' is not an absolute path"),
    ([], "the file must hold a JSON object"),
])
def test_refusals_name_the_key(data: Any, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(data)
    assert words in str(caught.value)


def test_load_preamble_missing_files_and_roots(tmp_path: Path) -> None:
    paths = resolve_paths(tmp_path)
    assert daemon_config.load(paths) == DaemonConfig()  # no default file: an empty configuration
    with pytest.raises(ConfigError, match=f"with file {tmp_path}/x.json: no such file"):
        daemon_config.load(paths, tmp_path / "x.json")
    paths.etc.mkdir(parents=True)
    (paths.etc / "daemon.json").write_text(json.dumps({"data-root": "/var/lib/docker"}))
    with pytest.raises(ConfigError, match=r"data-root: /var/lib/docker differs from .*var/lib/skiff"):
        daemon_config.load(paths)
    (paths.etc / "daemon.json").write_text(json.dumps({"data-root": str(paths.lib), "exec-root": str(paths.run)}))
    assert daemon_config.load(paths).data_root == str(paths.lib)


def test_reload_takes_only_the_reloadable_keys(tmp_path: Path) -> None:
    paths = resolve_paths(tmp_path)
    paths.etc.mkdir(parents=True)
    file = paths.etc / "daemon.json"
    file.write_text(json.dumps({"labels": ["v=1"], "mtu": 1400, "log-driver": "json-file"}))
    live = LiveConfig(paths)
    file.write_text(json.dumps({"labels": ["v=2"], "mtu": 1300, "log-driver": "local", "debug": True,
                                "runtimes": {"r": {"path": "/r"}}, "default-runtime": "r"}))
    now = live.reload()
    assert now.labels == ("v=2",) and now.debug and now.default_runtime == "r" and "r" in now.runtimes
    assert now.mtu == 1400 and now.log_driver == "json-file"  # need a restart, as with dockerd
    file.write_text("{")
    with pytest.raises(ConfigError, match="invalid JSON"):
        live.reload()
    assert live.current == now


def test_published_configuration_reads_back(tmp_path: Path) -> None:
    paths = resolve_paths(tmp_path)
    config = parse(FULL, "/etc/skiff/daemon.json")
    daemon_config.publish(paths, config)
    assert daemon_config.read_in_force(paths) == config
    assert daemon_config.read_in_force(resolve_paths(tmp_path / "none")) is None


def test_container_defaults() -> None:
    config = parse({"log-driver": "json-file", "log-opts": {"max-size": "1m", "max-file": "3"},
                    "runtimes": {"fast": {"path": "/fast"}}, "default-runtime": "fast",
                    "default-ulimits": {"nofile": {"Soft": 1, "Hard": 2}, "nproc": {"Soft": 3, "Hard": 4}}})
    host = SimpleNamespace(runtime="", log_driver="", log_opts={"max-size": "5m"},
                           ulimits=[SimpleNamespace(name="nofile", soft=9, hard=9)])
    daemon_config.apply_runtime_default(config, host)
    daemon_config.apply_log_defaults(config, host)
    daemon_config.apply_ulimit_defaults(config, host, SimpleNamespace)
    assert host.runtime == "fast" and host.log_driver == "json-file"
    assert host.log_opts == {"max-size": "5m", "max-file": "3"}
    assert [(u.name, u.soft) for u in host.ulimits] == [("nofile", 9), ("nproc", 3)]
    other = SimpleNamespace(runtime="runc", log_driver="local", log_opts={}, ulimits=[])
    daemon_config.apply_log_defaults(config, other)
    assert other.log_opts == {}  # another driver: the daemon's options are not its own
    assert daemon_config.runtime_for(config, "runc", "skiff-lowlevel") == "skiff-lowlevel"
    assert daemon_config.runtime_for(config, "fast", "skiff-lowlevel") == "/fast"
    with pytest.raises(Exception, match="unknown or invalid runtime name: gone"):
        daemon_config.runtime_for(config, "gone", "skiff-lowlevel")


def test_flags_beside_the_file(tmp_path: Path) -> None:
    file = tmp_path / "daemon.json"
    file.write_text(json.dumps({"hosts": ["unix:///x.sock"]}))
    config = parse(json.loads(file.read_text()), str(file))
    with pytest.raises(ConfigError, match="specified both as a flag and in the configuration file: hosts"):
        daemon_config.with_flags(config, {"hosts": ("tcp://127.0.0.1:1",), "tls": None})
    assert daemon_config.with_flags(config, {"tlsverify": True, "hosts": None}).tlsverify
    assert daemon_config.parse_flag_bool("false") is False and daemon_config.parse_flag_bool("1") is True


def test_listener_plan() -> None:
    endpoints, warnings = api_endpoints.plan(DaemonConfig())
    assert [(e.scheme, e.address) for e in endpoints] == [("fd", "")] and warnings == []
    with pytest.raises(ConfigError, match=r"refusing to serve tcp://0.0.0.0:2375 without TLS"):
        api_endpoints.plan(DaemonConfig(hosts=("tcp://0.0.0.0:2375",)))
    _, warnings = api_endpoints.plan(DaemonConfig(hosts=("tcp://0.0.0.0:2375",), tls=False))
    assert "DON'T BIND ON ANY IP ADDRESS WITHOUT setting --tlsverify" in warnings[0]
    with pytest.raises(ConfigError, match="tlscacert"):
        api_endpoints.plan(DaemonConfig(hosts=("tcp://127.0.0.1:2376",), tlsverify=True, tlscert="/c", tlskey="/k"))
    endpoints, warnings = api_endpoints.plan(parse(FULL))
    tcp = endpoints[1]
    assert tcp.scheme == "tcp" and tcp.address == "127.0.0.1:2376" and tcp.tls is not None and tcp.tls.verify
    assert warnings == []
    _, warnings = api_endpoints.plan(DaemonConfig(hosts=("tcp://[::1]:2376",), tls=True, tlscert="/c", tlskey="/k"))
    assert "without --tlsverify: any client is served" in warnings[0]
