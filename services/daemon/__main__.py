"""``skiff-daemon [--root PREFIX] [--runtime NAME]``: the daemon, in the foreground."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from services.common.config import Config
from services.common.logging import setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="skiff-daemon", description=__doc__)
    parser.add_argument("--root", help="state prefix (default: $SKIFF_ROOT, else /)")
    parser.add_argument("--runtime", help="OCI runtime for new containers: skiff-lowlevel, runc, crun or a path")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--bridge-name", help="device of the default `bridge` network (default: $SKIFF_BRIDGE_NAME, "
                        "else skiff0)")
    parser.add_argument("--default-subnet", help="subnet of the default `bridge` network when it is first made "
                        "(default: $SKIFF_DEFAULT_SUBNET, else a free 10.x range)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    setup_logging("daemon", level=args.log_level)
    if args.bridge_name:
        os.environ["SKIFF_BRIDGE_NAME"] = args.bridge_name
    if args.default_subnet:
        os.environ["SKIFF_DEFAULT_SUBNET"] = args.default_subnet
    from services.daemon.server import serve

    return asyncio.run(serve(Config.load(args.root, args.runtime)))


if __name__ == "__main__":
    sys.exit(main())
