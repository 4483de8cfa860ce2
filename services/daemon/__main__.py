"""``skiff-daemon [--root PREFIX] [--runtime NAME]``: the daemon, in the foreground."""

from __future__ import annotations

import argparse
import asyncio
import sys

from services.common.config import Config
from services.common.logging import setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="skiff-daemon", description=__doc__)
    parser.add_argument("--root", help="state prefix (default: $SKIFF_ROOT, else /)")
    parser.add_argument("--runtime", help="OCI runtime for new containers: skiff-lowlevel, runc, crun or a path")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    setup_logging("daemon", level=args.log_level)
    from services.daemon.server import serve

    asyncio.run(serve(Config.load(args.root, args.runtime)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
