"""The apiserver on TCP with mutual TLS (services/common/api_endpoints.py), as dockerd's -H tcp://... --tlsverify:
the docker CLI and docker-py with the CA's client certificate are served (attach included), a client
certificate another CA signed, or none, is refused; plain TCP only with --tls=false and dockerd's warning.
Certificates are made here with openssl."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest
from docker.tls import TLSConfig

from tests.e2e.stack import Stack
from tests.support.tasks import wait_for

DOCKER = "/usr/local/bin/docker"


def openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def make_ca(folder: Path, name: str) -> None:
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}-key.pem", "-out", f"{name}.pem", "-days", "1", "-subj", f"/CN={name}", cwd=folder)


def make_cert(folder: Path, ca: str, name: str, usage: str, san: str = "") -> None:
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
            f"{name}-key.pem", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=folder)
    ext = folder / f"{name}.ext"
    ext.write_text(f"extendedKeyUsage={usage}\n" + (f"subjectAltName={san}\n" if san else ""))
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}-key.pem",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "1", "-extfile", ext.name, cwd=folder)


@dataclass(frozen=True, slots=True)
class Certs:
    folder: Path

    def path(self, name: str) -> str:
        return str(self.folder / name)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    folder = tmp_path_factory.mktemp("tls")
    make_ca(folder, "ca")
    make_cert(folder, "ca", "server", "serverAuth", "IP:127.0.0.1")
    make_cert(folder, "ca", "client", "clientAuth")
    make_ca(folder, "rogue-ca")  # a CA the server does not trust, and a client certificate it signed
    make_cert(folder, "rogue-ca", "rogue", "clientAuth")
    return Certs(folder)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(slots=True)
class Apiserver:
    proc: subprocess.Popen[bytes]
    log: Path
    host: str


def start_apiserver(stack: Stack, args: list[str], host: str, name: str) -> Apiserver:
    """A second apiserver on the stack's daemon, serving only where ``args`` say."""
    log = stack.prefix / f"{name}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "services.apiserver", "--root", str(stack.prefix), *args],
                                stdout=subprocess.DEVNULL, stderr=out, env=dict(os.environ, SKIFF_LOG_FORMAT="json"))
    address = host.removeprefix("tcp://").rsplit(":", 1)

    def listening() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"apiserver exited {proc.returncode}: {log.read_text()[-2000:]}")
        with socket.socket() as s:
            return s.connect_ex((address[0], int(address[1]))) == 0

    wait_for(listening, 30, f"apiserver on {host}")
    return Apiserver(proc, log, host)


def stop(server: Apiserver) -> None:
    if server.proc.poll() is None:
        server.proc.terminate()
        try:
            server.proc.wait(15)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait(10)


@pytest.fixture
def tls_api(stack: Stack, client: docker.DockerClient, certs: Certs) -> Iterator[Apiserver]:
    host = f"tcp://127.0.0.1:{free_port()}"
    server = start_apiserver(stack, ["-H", host, "--tlsverify", "--tlscacert", certs.path("ca.pem"),
                                     "--tlscert", certs.path("server.pem"), "--tlskey", certs.path("server-key.pem")],
                             host, "tls-apiserver")
    try:
        yield server
    finally:
        stop(server)


def docker_cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env["DOCKER_CONFIG"] = str(stack.prefix / "docker-config")
    return subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=60, env=env)


def tls_flags(certs: Certs, client: str = "client") -> list[str]:
    return ["--tlsverify", "--tlscacert", certs.path("ca.pem"), "--tlscert", certs.path(f"{client}.pem"),
            "--tlskey", certs.path(f"{client}-key.pem")]


def test_docker_cli_over_mutual_tls(stack: Stack, tls_api: Apiserver, certs: Certs) -> None:
    flags = [*tls_flags(certs), "-H", tls_api.host]
    version = docker_cli(stack, *flags, "version", "--format", "{{.Server.Version}}")
    assert version.returncode == 0 and version.stdout.strip(), version.stderr
    # run --rm attaches: the hijacked stream works over TLS too.
    ran = docker_cli(stack, *flags, "run", "--rm", "busybox", "echo", "over tls")
    assert ran.returncode == 0 and ran.stdout == "over tls\n", ran.stderr
    listed = docker_cli(stack, *flags, "ps", "-a", "--format", "{{.ID}}")
    assert listed.returncode == 0 and listed.stdout == "", listed.stderr


@pytest.fixture
def no_ca_bundle_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """requests lets $REQUESTS_CA_BUNDLE/$CURL_CA_BUNDLE override the session's verify (TLSConfig's CA)."""
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("no_ca_bundle_env")
def test_docker_py_tlsconfig(stack: Stack, tls_api: Apiserver, certs: Certs) -> None:
    tls = TLSConfig(client_cert=(certs.path("client.pem"), certs.path("client-key.pem")), ca_cert=certs.path("ca.pem"),
                    verify=True)
    c = docker.DockerClient(base_url=tls_api.host, tls=tls, timeout=30)
    try:
        assert c.ping()
        assert c.containers.run("busybox", ["echo", "py over tls"], remove=True) == b"py over tls\n"
        assert c.info()["Containers"] == 0
    finally:
        c.close()


@pytest.mark.usefixtures("no_ca_bundle_env")
def test_client_certificate_of_another_ca_is_refused(stack: Stack, tls_api: Apiserver, certs: Certs) -> None:
    rogue = docker_cli(stack, *tls_flags(certs, "rogue"), "-H", tls_api.host, "version")
    # TLS 1.3: the client learns of the refusal when it reads (the CLI says EOF or names the alert).
    assert rogue.returncode != 0 and "Server:" not in rogue.stdout, rogue.stdout
    assert "error during connect" in rogue.stderr, rogue.stderr
    wait_for(lambda: "TLS handshake refused" in tls_api.log.read_text(), 10, "the refusal logged")
    # No client certificate at all: the handshake fails too.
    ctx = ssl.create_default_context(cafile=certs.path("ca.pem"))
    address = tls_api.host.removeprefix("tcp://").rsplit(":", 1)
    with socket.create_connection((address[0], int(address[1])), timeout=10) as raw, \
            pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)), \
            ctx.wrap_socket(raw, server_hostname=address[0]) as tls_sock:
        tls_sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n")
        assert tls_sock.recv(100) == b""  # TLS 1.3: the refusal may come with the first read
        raise ssl.SSLError("closed without an answer")
    tls = TLSConfig(client_cert=(certs.path("rogue.pem"), certs.path("rogue-key.pem")), ca_cert=certs.path("ca.pem"),
                    verify=True)
    # The client asks for the server's version as it is made: refused there.
    with pytest.raises(docker.errors.DockerException, match="(?i)unknown ca|ssl|certificate|connection"):
        docker.DockerClient(base_url=tls_api.host, tls=tls, timeout=10)
    assert tls_api.proc.poll() is None


def test_plain_tcp_refused_unless_asked_for_with_a_loud_warning(stack: Stack, client: docker.DockerClient) -> None:
    host = f"tcp://127.0.0.1:{free_port()}"
    refused = subprocess.run([sys.executable, "-m", "services.apiserver", "--root", str(stack.prefix), "-H", host],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and f"refusing to serve {host} without TLS" in refused.stderr, refused.stderr
    server = start_apiserver(stack, ["-H", host, "--tls=false"], host, "plain-apiserver")
    try:
        version = docker_cli(stack, "-H", host, "version", "--format", "{{.Server.Version}}")
        assert version.returncode == 0 and version.stdout.strip(), version.stderr
        assert "DON'T BIND ON ANY IP ADDRESS WITHOUT setting --tlsverify" in server.log.read_text()
    finally:
        stop(server)


def test_hosts_and_tls_from_daemon_json(stack: Stack, client: docker.DockerClient, certs: Certs) -> None:
    host = f"tcp://127.0.0.1:{free_port()}"
    sock = stack.prefix / "second.sock"
    config = stack.prefix / "tls-daemon.json"
    config.write_text(json.dumps({
        "hosts": [f"unix://{sock}", host], "tlsverify": True, "tlscacert": certs.path("ca.pem"),
        "tlscert": certs.path("server.pem"), "tlskey": certs.path("server-key.pem"),
    }))
    # A key given both ways is refused, as dockerd does.
    both = subprocess.run([sys.executable, "-m", "services.apiserver", "--root", str(stack.prefix), "--config-file",
                           str(config), "-H", host], capture_output=True, text=True, timeout=60)
    assert both.returncode == 1 and "specified both as a flag and in the configuration file: hosts" in both.stderr
    server = start_apiserver(stack, ["--config-file", str(config)], host, "json-apiserver")
    try:
        over_tls = docker_cli(stack, *tls_flags(certs), "-H", host, "info", "--format", "{{.ID}}")
        assert over_tls.returncode == 0 and over_tls.stdout.strip() == "skiff", over_tls.stderr
        local = docker_cli(stack, "-H", f"unix://{sock}", "info", "--format", "{{.ID}}")
        assert local.returncode == 0 and local.stdout.strip() == "skiff", local.stderr
    finally:
        stop(server)
    assert not sock.exists()
