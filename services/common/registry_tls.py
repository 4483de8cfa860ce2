"""TLS to a registry as dockerd sets it up from ``certs.d/<host:port>/``, for every service that talks to one
(highlevel pulls and pushes, the apiserver checks logins); a hosts.toml entry's ``ca``, ``client`` and
``skip_verify`` add to it (``host_context``).

In the host's folder, as Docker reads it: each ``*.crt`` is a CA trusted beside the system's; each
``*.cert`` is a client certificate whose key is the ``*.key`` of the same name (one without the other is
an error). A host without a folder gets the system's trust only.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from services.common.errors import Internal, InvalidArgument

# OpenSSL verify codes that mean "no trusted CA signed this": Go's "x509: certificate signed by unknown authority".
_UNKNOWN_AUTHORITY = {2, 18, 19, 20, 21}
_EXPIRED = {9, 10}
_HOSTNAME_MISMATCH = 62


class CertificateError(Internal):
    """The registry's certificate is not trusted: dockerd answers these with a 500, so do we."""


def host_folder(certs_d: Path, host: str) -> Path:
    """``host`` is the registry's host[:port] as written in the image reference."""
    if not host or "/" in host or host in (".", ".."):
        raise InvalidArgument(f"invalid registry host {host!r}")
    return certs_d / host


def ssl_context(certs_d: Path | None, host: str, extra_ca: Path | None = None) -> ssl.SSLContext:
    """The system's trust, plus ``extra_ca`` and what ``certs.d/<host>/`` holds."""
    ctx = ssl.create_default_context()
    if extra_ca is not None:
        _load_ca(ctx, extra_ca)
    folder = host_folder(certs_d, host) if certs_d is not None else None
    if folder is None or not folder.is_dir():
        return ctx
    files = sorted(p for p in folder.iterdir() if p.is_file())
    for path in files:
        if path.suffix == ".crt":
            _load_ca(ctx, path)
    for path in files:
        if path.suffix == ".cert":
            key = path.with_suffix(".key")
            if not key.is_file():
                raise InvalidArgument(f"missing key {key.name} for client certificate {path}")
            try:
                ctx.load_cert_chain(certfile=str(path), keyfile=str(key))
            except (ssl.SSLError, OSError) as exc:
                raise InvalidArgument(f"client certificate {path} with key {key}: {exc}") from None
        elif path.suffix == ".key" and not path.with_suffix(".cert").is_file():
            raise InvalidArgument(f"missing client certificate {path.with_suffix('.cert').name} for key {path}")
    return ctx


def host_context(certs_d: Path | None, host: str, extra_ca: Path | None = None, *, ca: tuple[Path, ...] = (),
                 client: tuple[tuple[Path, Path | None], ...] = (), skip_verify: bool = False) -> ssl.SSLContext:
    """``ssl_context``, plus what a host's hosts.toml entry gives (services/common/registry_hosts.py): more
    CAs, client certificates (the key in the certificate's file when None), or no verification at all
    (``skip_verify``, or an insecure registry)."""
    ctx = ssl_context(certs_d, host, extra_ca)
    for path in ca:
        _load_ca(ctx, path)
    for cert, key in client:
        try:
            ctx.load_cert_chain(certfile=str(cert), keyfile=str(key) if key is not None else None)
        except (ssl.SSLError, OSError) as exc:
            raise InvalidArgument(f"client certificate {cert}{f' with key {key}' if key else ''}: {exc}") from None
    if skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _load_ca(ctx: ssl.SSLContext, path: Path) -> None:
    try:
        ctx.load_verify_locations(cafile=str(path))
    except (ssl.SSLError, OSError) as exc:
        raise InvalidArgument(f"CA certificate {path}: {exc}") from None


def x509_message(method: str, url: str, error: BaseException, host: str, certs_d: Path | None) -> str:
    """Docker's wording (Go's x509 errors), and where to put the CA that would make it trusted."""
    verify = getattr(error, "certificate_error", error)
    code = getattr(verify, "verify_code", None)
    if code in _UNKNOWN_AUTHORITY:
        reason = "x509: certificate signed by unknown authority"
    elif code in _EXPIRED:
        reason = "x509: certificate has expired or is not yet valid"
    elif code == _HOSTNAME_MISMATCH:
        reason = f"x509: certificate is not valid for {host}"
    else:
        reason = f"x509: {getattr(verify, 'verify_message', None) or verify}"
    hint = f" (a CA for this registry goes in {certs_d / host}/ca.crt)" if certs_d is not None else ""
    return f'{method.capitalize()} "{url}": {reason}{hint}'
