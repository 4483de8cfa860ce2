"""Where the apiserver listens (dockerd's ``-H``/``hosts``) and with which TLS (``--tls*``).

- No host given: ``<run>/skiff.sock`` (or the socket systemd hands over); ``fd://`` names that one too.
- ``unix:///path``: a socket file, mode 0660, group ``skiff``.
- ``tcp://host:port``: with ``--tlsverify`` the client must show a certificate signed by
  ``--tlscacert`` (mutual TLS); ``--tls`` alone: the server's certificate only, any client. TLS 1.2
  at least, as dockerd. Plain TCP only when asked for with ``--tls=false``, and then with dockerd's
  warning: anyone who reaches the port is root on this machine.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from services.common.daemon_config import ConfigError, DaemonConfig, parse_host

# dockerd's words (daemon/listeners and cmd/dockerd), for a listener that anyone on the network can use.
PLAIN_TCP_WARNING = (
    "[!] DON'T BIND ON ANY IP ADDRESS WITHOUT setting --tlsverify IF YOU DON'T KNOW WHAT YOU'RE DOING [!] "
    "Binding to IP address without --tlsverify is insecure and gives root access on this machine to "
    "everyone who has access to your network."
)


class TLSSetupError(Exception):
    """The certificates given cannot be used; the message names the file."""


@dataclass(frozen=True, slots=True)
class ServerTLS:
    cert: str
    key: str
    ca: str = ""  # with verify: the CA that signs client certificates
    verify: bool = False

    def context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(self.cert, self.key)
        except (OSError, ssl.SSLError) as exc:
            raise TLSSetupError(f"could not load the server's certificate {self.cert} and key {self.key}: {exc}") \
                from None
        if self.verify:
            if not self.ca:
                raise TLSSetupError("--tlsverify needs --tlscacert: the CA that signs the clients' certificates")
            try:
                ctx.load_verify_locations(cafile=self.ca)
            except (OSError, ssl.SSLError) as exc:
                raise TLSSetupError(f"could not read CA certificate {self.ca}: {exc}") from None
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx


@dataclass(frozen=True, slots=True)
class Endpoint:
    scheme: str  # unix, tcp or fd
    address: str  # a path, host:port, or "" for fd://
    tls: ServerTLS | None = None


def plan(config: DaemonConfig) -> tuple[list[Endpoint], list[str]]:
    """The listeners of ``config`` (flags already merged in) and the warnings to log loudly.

    ConfigError for a TCP host without TLS unless ``tls`` is explicitly false, or TLS without its files."""
    hosts = list(config.hosts) or ["fd://"]
    verify = config.tlsverify
    use_tls = verify or bool(config.tls)
    tls = None
    if use_tls:
        if not (config.tlscert and config.tlskey):
            raise ConfigError("tlscert/tlskey: TLS needs the server's certificate and key")
        if verify and not config.tlscacert:
            raise ConfigError("tlscacert: --tlsverify needs the CA that signs the clients' certificates")
        tls = ServerTLS(config.tlscert, config.tlskey, config.tlscacert, verify)
    endpoints: list[Endpoint] = []
    warnings: list[str] = []
    for host in hosts:
        scheme, address = parse_host(host)
        if scheme != "tcp":
            endpoints.append(Endpoint(scheme, address))
            continue
        if tls is None:
            if config.tls is not False:
                raise ConfigError(f"hosts: refusing to serve {host} without TLS: give --tlsverify with --tlscacert, "
                                  "--tlscert and --tlskey (or --tls=false to serve it unencrypted and "
                                  "unauthenticated)")
            warnings.append(f"API listener on {host} without TLS. {PLAIN_TCP_WARNING}")
        elif not verify:
            warnings.append(f"API listener on {host} with TLS but without --tlsverify: any client is served. "
                            f"{PLAIN_TCP_WARNING}")
        endpoints.append(Endpoint(scheme, address, tls))
    return endpoints, warnings
