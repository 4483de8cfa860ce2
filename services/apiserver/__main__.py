"""``skiff-apiserver [--root PREFIX]``: the Docker Engine API on <run>/skiff.sock, in the foreground."""

from __future__ import annotations

import argparse
import asyncio
import sys

from services.common.config import Config
from services.common.logging import setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="skiff-apiserver", description=__doc__)
    parser.add_argument("--root", help="state prefix (default: $SKIFF_ROOT, else /)")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    setup_logging("apiserver", level=args.log_level)
    from services.apiserver.server import serve

    return asyncio.run(serve(Config.load(args.root)))


if __name__ == "__main__":
    sys.exit(main())
