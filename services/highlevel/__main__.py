"""``skiff-highlevel [--root PREFIX] [--runtime NAME]``: the high-level runtime, in the foreground."""

from __future__ import annotations

import argparse
import asyncio
import sys

from services.common.config import Config
from services.common.daemon_config import ConfigError, add_config_file_flag
from services.common.logging import setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="skiff-highlevel", description=__doc__)
    parser.add_argument("--root", help="state prefix (default: $SKIFF_ROOT, else /)")
    parser.add_argument("--runtime", help="default OCI runtime: skiff-lowlevel, runc, crun or a path")
    parser.add_argument("--log-level", default="info")
    add_config_file_flag(parser)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        # daemon.json: checked here too (a bad file stops every service, naming the key).
        config = Config.load(args.root, args.runtime, args.config_file)
    except ConfigError as exc:
        print(f"skiff-highlevel: {exc}", file=sys.stderr)
        return 1
    setup_logging("highlevel", level=args.log_level)
    from services.highlevel.server import serve

    # No uvloop: its child processes inherit the launcher's pipes, so a detached shim would keep
    # highlevel waiting for their end of file.
    return asyncio.run(serve(config))


if __name__ == "__main__":
    sys.exit(main())
