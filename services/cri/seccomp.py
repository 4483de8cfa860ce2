"""The seccomp profiles a CRI container asks for: RuntimeDefault, Unconfined or a localhost file.

RuntimeDefault is the engine's one default profile (services/common/seccomp_default.py), the same
as `docker run` gets; a localhost file may be in OCI's shape or Docker's (archMap, includes), made
into OCI's as dockerd does for `--security-opt seccomp=FILE`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from services.common.errors import InvalidArgument
from services.common.seccomp_default import default_profile, from_docker_profile


def runtime_default(caps: list[str]) -> dict[str, Any]:
    return default_profile(caps)


def localhost(path: str, caps: list[str]) -> dict[str, Any]:
    """A profile file on the node, for a container holding ``caps``."""
    if not path.startswith("/"):
        raise InvalidArgument(f"seccomp profile `{path}`: an absolute path is needed")
    try:
        profile = json.loads(Path(path).read_text())
    except OSError as exc:
        raise InvalidArgument(f"seccomp profile `{path}`: {exc.strerror}") from None
    except ValueError:
        raise InvalidArgument(f"seccomp profile `{path}`: not JSON") from None
    return from_docker_profile(profile, caps)
