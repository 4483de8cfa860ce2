"""``skiff-daemon [--root PREFIX] [--runtime NAME] [--config-file FILE]``: the daemon, in the foreground.

daemon.json (services.common.daemon_config) is read first: a bad file stops the start, naming the key."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import sys

from services.common.config import Config
from services.common.daemon_config import ConfigError, add_config_file_flag
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
    add_config_file_flag(parser)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        config = Config.load(args.root, args.runtime, args.config_file)
    except ConfigError as exc:
        print(f"skiff-daemon: {exc}", file=sys.stderr)
        return 1
    settings = config.settings.current
    setup_logging("daemon", level="debug" if settings.debug else args.log_level)
    if args.bridge_name:
        os.environ["SKIFF_BRIDGE_NAME"] = args.bridge_name
    # daemon.json's bip: the default bridge's subnet (--default-subnet wins), as dockerd's --bip.
    subnet = args.default_subnet or (str(ipaddress.IPv4Interface(settings.bip).network) if settings.bip else "")
    if subnet:
        os.environ["SKIFF_DEFAULT_SUBNET"] = subnet
    if settings.cgroup_parent:
        os.environ["SKIFF_CGROUP_PARENT"] = settings.cgroup_parent  # read by daemon/spec.py
    from services.daemon.server import serve

    return asyncio.run(serve(config))


if __name__ == "__main__":
    sys.exit(main())
