"""``skiff-cri [--root PREFIX] [--runtime NAME]``: Kubernetes' CRI for Skiff, in the foreground.

Environment: SKIFF_CNI_CONF_DIR (default /etc/cni/net.d), SKIFF_CNI_BIN_DIR (default /usr/lib/cni,
``:``-separated), SKIFF_CGROUP_PARENT (the parent of containers whose pod names none). Pods need no
pause image (their namespaces are held by bind mounts, their PID namespace by skiff-cri's own
129-byte pause program, services/cri/pause.py), so SKIFF_SANDBOX_IMAGE is not read.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from services.common.logging import setup_logging
from services.common.paths import resolve_paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="skiff-cri", description=__doc__)
    parser.add_argument("--root", help="state prefix (default: $SKIFF_ROOT, else /)")
    parser.add_argument("--runtime", default="", help="OCI runtime of the pods' containers (default: highlevel's)")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    setup_logging("cri", level=args.log_level)
    from services.cri.server import serve
    from services.cri.settings import CriSettings

    return asyncio.run(serve(CriSettings.from_env(resolve_paths(args.root), args.runtime)))


if __name__ == "__main__":
    sys.exit(main())
