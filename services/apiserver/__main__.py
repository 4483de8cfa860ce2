"""``skiff-apiserver [--root PREFIX] [--config-file FILE] [-H HOST]... [--tls*]``: the Docker Engine API, in
the foreground: on <run>/skiff.sock (or systemd's socket) unless -H (or daemon.json's hosts) says where;
a tcp:// host needs TLS (--tlsverify --tlscacert --tlscert --tlskey) or an explicit --tls=false."""

from __future__ import annotations

import argparse
import sys

from services.common import api_endpoints
from services.common.config import Config
from services.common.daemon_config import ConfigError, add_config_file_flag, parse_flag_bool, with_flags
from services.common.logging import setup_logging


def positive_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="skiff-apiserver", description=__doc__)
    parser.add_argument("--root", help="state prefix (default: $SKIFF_ROOT, else /)")
    parser.add_argument("--log-level", default="info")
    add_config_file_flag(parser)
    parser.add_argument("-H", "--host", dest="hosts", action="append", metavar="HOST",
                        help="unix:///path, tcp://host:port or fd:// (repeatable; default: <run>/skiff.sock)")
    parser.add_argument("--tls", nargs="?", const="true", type=parse_flag_bool, metavar="BOOL",
                        help="TLS on tcp:// hosts (implied by --tlsverify); --tls=false allows plain TCP")
    parser.add_argument("--tlsverify", nargs="?", const="true", type=parse_flag_bool, metavar="BOOL",
                        help="TLS, and the client must show a certificate signed by --tlscacert")
    parser.add_argument("--tlscacert", help="CA certificate that signs the clients' certificates")
    parser.add_argument("--tlscert", help="the server's certificate")
    parser.add_argument("--tlskey", help="the server's key")
    parser.add_argument("--metrics-addr", metavar="HOST:PORT",
                        help="serve Prometheus metrics on this TCP address (e.g. 127.0.0.1:9323; off by default)")
    parser.add_argument("--metrics-refresh", type=positive_seconds, default=5.0, metavar="SECONDS",
                        help="how often the running, shim and restart figures are read (default 5)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        config = Config.load(args.root, config_file=args.config_file)
        flags = {"hosts": tuple(args.hosts) if args.hosts else None, "tls": args.tls, "tlsverify": args.tlsverify,
                 "tlscacert": args.tlscacert, "tlscert": args.tlscert, "tlskey": args.tlskey}
        config.settings.current = with_flags(config.settings.current, flags)
        api_endpoints.plan(config.settings.current)  # a bad combination stops the start here, with its reason
    except ConfigError as exc:
        print(f"skiff-apiserver: {exc}", file=sys.stderr)
        return 1
    setup_logging("apiserver", level=args.log_level)
    if args.metrics_addr:
        from services.apiserver import metrics

        try:
            metrics.enable(args.metrics_addr, refresh=args.metrics_refresh)
        except (OSError, ValueError) as exc:
            print(f"skiff-apiserver: --metrics-addr {args.metrics_addr}: {exc}", file=sys.stderr)
            return 1
    import uvloop

    from services.apiserver.server import serve

    # uvloop measured faster here (CPU per docker run --rm: 11.3/12.0 -> 10.0/10.0 ms, per kept list
    # 0.20/0.18 -> 0.16/0.16 ms, interleaved pairs; bench/profile_engine.py). The daemon gains nothing
    # measurable on it and highlevel keeps asyncio's loop (see highlevel/__main__.py).
    return uvloop.run(serve(config))


if __name__ == "__main__":
    sys.exit(main())
