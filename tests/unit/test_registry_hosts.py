"""services/common/registry_hosts.py: the shapes of hosts.toml containerd accepts (its docs/hosts.md), and
Docker's routing from daemon.json's registry-mirrors and insecure-registries."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.registry_hosts import (
    CAPABILITIES,
    DockerSettings,
    HostsError,
    docker_hosts,
    hosts_file,
    is_insecure,
    parse_hosts,
    resolve_hosts,
)

FOLDER = Path("/etc/skiff/certs.d/registry.k8s.io")


def test_server_and_a_mirror_in_order() -> None:
    hosts = parse_hosts('''
server = "https://registry.k8s.io"

[host."http://127.0.0.1:5000"]
  capabilities = ["pull", "resolve"]
''', "registry.k8s.io", FOLDER)
    mirror, server = hosts
    assert (mirror.scheme, mirror.host, mirror.path) == ("http", "127.0.0.1:5000", "/v2")
    assert mirror.capabilities == {"pull", "resolve"} and not mirror.upstream
    assert (server.scheme, server.host, server.path) == ("https", "registry.k8s.io", "/v2")
    assert server.capabilities == CAPABILITIES and server.upstream
    assert mirror.namespace == server.namespace == "registry.k8s.io"


def test_hosts_keep_the_files_order() -> None:
    text = "\n".join(f'[host."https://m{i}.example"]\n  capabilities = ["pull"]' for i in (3, 1, 2))
    assert [h.host for h in parse_hosts(text, "docker.io", FOLDER)] == [
        "m3.example", "m1.example", "m2.example", "registry-1.docker.io"]


@pytest.mark.parametrize(("namespace", "host"), [("docker.io", "registry-1.docker.io"), ("quay.io", "quay.io"),
                                                  ("10.0.0.1:5000", "10.0.0.1:5000")])
def test_default_server_is_the_namespace(namespace: str, host: str) -> None:
    (server,) = parse_hosts("", namespace, FOLDER)
    assert (server.scheme, server.host) == ("https", host)


def test_loopback_namespace_without_server_keeps_the_http_fallback() -> None:
    (server,) = parse_hosts("", "127.0.0.1:5000", FOLDER)
    assert server.scheme is None  # https, else plain http: as without a hosts.toml


def test_ca_client_skip_verify_and_headers() -> None:
    hosts = parse_hosts('''
server = "https://registry.example"
ca = "server-ca.pem"

[host."https://mirror.example:8443"]
  ca = ["/etc/certs/a.pem", "b.pem"]
  client = [["client.cert", "client.key"], ["/abs/both.pem"]]
  skip_verify = true
  [host."https://mirror.example:8443".header]
    x-one = "1"
    x-many = ["a", "b"]

[host."https://other.example"]
  client = "single.pem"
''', "registry.example", FOLDER)
    mirror, other, server = hosts
    assert mirror.ca == (Path("/etc/certs/a.pem"), FOLDER / "b.pem")
    assert mirror.client == ((FOLDER / "client.cert", FOLDER / "client.key"), (Path("/abs/both.pem"), None))
    assert mirror.skip_verify and not server.skip_verify
    assert mirror.headers == (("x-one", "1"), ("x-many", "a"), ("x-many", "b"))
    assert other.client == ((FOLDER / "single.pem", None),)
    assert server.ca == (FOLDER / "server-ca.pem",)


@pytest.mark.parametrize(("url", "override", "path"), [
    ("https://m.example", False, "/v2"),
    ("https://m.example/", False, "/v2"),
    ("https://m.example/v2", False, "/v2"),
    ("https://m.example/proxy/", False, "/proxy/v2"),
    ("https://m.example/custom/api", True, "/custom/api"),
    ("https://m.example", True, ""),
])
def test_api_root(url: str, override: bool, path: str) -> None:
    text = f'[host."{url}"]\n  override_path = {str(override).lower()}\n'
    assert parse_hosts(text, "docker.io", FOLDER)[0].path == path


def test_host_without_scheme_is_https() -> None:
    assert parse_hosts('[host."mirror.example:5000"]\n', "docker.io", FOLDER)[0].scheme == "https"


def test_server_without_capabilities_is_not_tried() -> None:
    hosts = parse_hosts('capabilities = []\n[host."http://127.0.0.1:5000"]\n', "registry.k8s.io", FOLDER)
    assert [h.host for h in hosts] == ["127.0.0.1:5000"]


def test_unknown_keys_are_ignored_as_containerd_16_does() -> None:
    assert len(parse_hosts('dial_timeout = "1s"\n[host."http://m"]\n  something_new = 1\n', "x.io", FOLDER)) == 2


@pytest.mark.parametrize(("text", "message"), [
    ('[host."http://m"]\n  capabilities = ["pull", "fly"]', "unknown capability 'fly'"),
    ('[host."http://m"]\n  skip_verify = "yes"', "skip_verify: expected true or false"),
    ('server = "ftp://m"', "unsupported scheme 'ftp'"),
    ('server = 5', "server: expected a URL string"),
    ("server = ", "invalid TOML"),
    ('[host."http://m"]\n  ca = 5', "ca: expected a path"),
    ('[host."http://m"]\n  client = [["a", "b", "c"]]', "expected [certificate, key]"),
    ('[host."http://m"]\n  header = { x = 1 }', "header: x: expected a string"),
])
def test_bad_files_name_the_key(text: str, message: str) -> None:
    with pytest.raises(HostsError) as failed:
        parse_hosts(text, "x.io", FOLDER, "/etc/x/hosts.toml")
    assert message in failed.value.message and "/etc/x/hosts.toml" in failed.value.message


def test_hosts_file_namespace_then_default(tmp_path: Path) -> None:
    assert hosts_file(tmp_path, "registry.k8s.io") is None
    (tmp_path / "_default").mkdir()
    (tmp_path / "_default" / "hosts.toml").write_text("")
    assert hosts_file(tmp_path, "registry.k8s.io") == tmp_path / "_default" / "hosts.toml"
    (tmp_path / "registry.k8s.io").mkdir()
    assert hosts_file(tmp_path, "registry.k8s.io") == tmp_path / "_default" / "hosts.toml"  # a folder of certs only
    (tmp_path / "registry.k8s.io" / "hosts.toml").write_text("")
    assert hosts_file(tmp_path, "registry.k8s.io") == tmp_path / "registry.k8s.io" / "hosts.toml"


def test_docker_mirrors_for_the_hub_only() -> None:
    settings = DockerSettings(mirrors=("https://mirror.example", "http://127.0.0.1:5000/"))
    hub = docker_hosts("docker.io", settings)
    assert [(h.scheme, h.host, h.upstream) for h in hub] == [
        ("https", "mirror.example", False), ("http", "127.0.0.1:5000", False), ("https", "registry-1.docker.io", True)]
    assert all(h.capabilities == {"pull", "resolve"} for h in hub[:2])
    assert [h.host for h in docker_hosts("quay.io", settings)] == ["quay.io"]


def test_docker_insecure_and_loopback() -> None:
    settings = DockerSettings(insecure=("192.0.2.0/24", "registry.lan:5000"))
    (cidr,) = docker_hosts("192.0.2.7:5000", settings)
    (named,) = docker_hosts("registry.lan:5000", settings)
    (secure,) = docker_hosts("registry.lan:5001", settings)
    (loop,) = docker_hosts("127.0.0.1:5000", settings)
    assert cidr.insecure and cidr.scheme is None and named.insecure
    assert not secure.insecure and secure.scheme == "https"
    assert loop.scheme is None and not loop.insecure  # plain http allowed, the certificate still checked


@pytest.mark.parametrize(("host", "listed", "expected"), [
    ("10.1.2.3:5000", ["10.0.0.0/8"], True), ("10.1.2.3", ["10.0.0.0/8"], True),
    ("11.1.2.3:5000", ["10.0.0.0/8"], False), ("r.lan:5000", ["r.lan:5000"], True),
    ("r.lan:5001", ["r.lan:5000"], False), ("[2001:db8::1]:5000", ["2001:db8::/32"], True),
    ("r.lan:5000", ["10.0.0.0/8"], False),
])
def test_is_insecure(host: str, listed: list[str], expected: bool) -> None:
    assert is_insecure(host, listed) is expected


def test_a_hosts_toml_is_the_whole_routing(tmp_path: Path) -> None:
    (tmp_path / "docker.io").mkdir()
    (tmp_path / "docker.io" / "hosts.toml").write_text('[host."https://192.0.2.9:5000"]\n')
    settings = DockerSettings(mirrors=("https://ignored.example",), insecure=("192.0.2.0/24",))
    hosts = resolve_hosts(tmp_path, "docker.io", settings)
    assert [h.host for h in hosts] == ["192.0.2.9:5000", "registry-1.docker.io"]
    assert hosts[0].insecure and not hosts[1].insecure
    assert [h.host for h in resolve_hosts(tmp_path, "quay.io", settings)] == ["quay.io"]
    assert [h.host for h in resolve_hosts(None, "docker.io", settings)] == ["ignored.example", "registry-1.docker.io"]
