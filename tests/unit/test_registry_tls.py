"""certs.d as Docker reads it: CAs (*.crt), client pairs (*.cert + *.key, one without the other refused),
the folder under the root prefix or from $SKIFF_CERTS_D, and a client certificate presented to a loopback
TLS server that demands one."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from pathlib import Path

import pytest
from aiohttp import web

from services.common.errors import InvalidArgument, NotFound, Unavailable
from services.common.paths import CERTS_D_ENV, resolve_paths
from services.common.registry_tls import CertificateError, ssl_context
from services.highlevel.images.reference import parse_reference
from services.highlevel.images.registry import RegistryClient, RegistryOptions
from tests.support import registry as support


def _client_pair(ca: support.TestCA, dest: Path) -> tuple[Path, Path]:
    folder = ca.ca_cert.parent

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60, cwd=folder)

    run(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        str(dest / "client.key"),
        "-out",
        "client.csr",
        "-subj",
        "/CN=skiff client",
    )
    run(
        "x509",
        "-req",
        "-in",
        "client.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        str(dest / "client.cert"),
        "-days",
        "2",
    )
    return dest / "client.cert", dest / "client.key"


def test_certs_d_under_the_prefix_or_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(CERTS_D_ENV, raising=False)
    assert resolve_paths(tmp_path).certs_d == tmp_path / "etc" / "skiff" / "certs.d"
    assert resolve_paths("/").certs_d == Path("/etc/skiff/certs.d")
    monkeypatch.setenv(CERTS_D_ENV, str(tmp_path / "elsewhere"))
    assert resolve_paths(tmp_path).certs_d == tmp_path / "elsewhere"


def test_folder_contents(tmp_path: Path) -> None:
    ca = support.make_ca(tmp_path / "ca")
    certs_d = tmp_path / "certs.d"
    host = certs_d / "127.0.0.1:5000"
    host.mkdir(parents=True)
    system = ssl_context(certs_d, "127.0.0.1:5000").cert_store_stats()["x509_ca"]
    (host / "ca.crt").write_bytes(ca.ca_cert.read_bytes())
    assert ssl_context(certs_d, "127.0.0.1:5000").cert_store_stats()["x509_ca"] == system + 1
    # Another host's folder is not this one's.
    assert ssl_context(certs_d, "127.0.0.1:5001").cert_store_stats()["x509_ca"] == system
    cert, key = _client_pair(ca, host)
    ssl_context(certs_d, "127.0.0.1:5000")
    key.unlink()
    with pytest.raises(InvalidArgument, match="missing key client.key"):
        ssl_context(certs_d, "127.0.0.1:5000")
    cert.rename(tmp_path / "moved.cert")
    (tmp_path / "moved.cert").rename(host / "other.key")
    with pytest.raises(InvalidArgument, match="missing client certificate other.cert"):
        ssl_context(certs_d, "127.0.0.1:5000")
    (host / "other.key").unlink()
    (host / "bad.crt").write_text("not a certificate")
    with pytest.raises(InvalidArgument, match="bad.crt"):
        ssl_context(certs_d, "127.0.0.1:5000")
    with pytest.raises(InvalidArgument):
        ssl_context(certs_d, "../escape")


def test_client_certificate_presented(tmp_path: Path) -> None:
    """A registry that demands a client certificate is reached only with the pair from certs.d."""
    ca = support.make_ca(tmp_path / "ca")
    port = support.free_port()
    host = f"127.0.0.1:{port}"
    certs_d = tmp_path / "certs.d"
    (certs_d / host).mkdir(parents=True)
    (certs_d / host / "ca.crt").write_bytes(ca.ca_cert.read_bytes())
    ref = parse_reference(f"{host}/mtls/bb:v1")

    async def scenario() -> None:
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca.ca_cert))
        server_ctx.load_cert_chain(str(ca.cert), str(ca.key))
        server_ctx.verify_mode = ssl.CERT_REQUIRED
        app = web.Application()

        async def ping(_: web.Request) -> web.Response:
            return web.json_response({})

        app.router.add_get("/v2/", ping)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, ssl_context=server_ctx).start()
        fast = RegistryOptions(certs_d=certs_d, connect_timeout=5, read_timeout=5, retries=0, plain_http=False)
        try:
            async with RegistryClient(fast) as rc:
                # The server ends the handshake: no answer, and no plain http tried (plain_http=False).
                with pytest.raises(Unavailable, match="gave up"):
                    await rc.get_manifest(ref)
            _client_pair(ca, certs_d / host)
            async with RegistryClient(fast) as rc:
                with pytest.raises(NotFound):  # reached: the registry has no such manifest
                    await rc.get_manifest(ref)
            # Without the CA: Docker's x509 error, a 500, not retried.
            (certs_d / host / "ca.crt").unlink()
            async with RegistryClient(fast) as rc:
                with pytest.raises(CertificateError, match="x509: certificate signed by unknown authority"):
                    await rc.get_manifest(ref)
        finally:
            await runner.cleanup()

    asyncio.run(scenario())
