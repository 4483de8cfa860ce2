"""Where every piece of state lives. One root prefix moves all of it.

Kept free of third-party imports: the shim and the low-level runtime import it on every launch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ROOT_ENV = "SKIFF_ROOT"
# Registry CAs and client certificates per host[:port], as Docker's /etc/docker/certs.d.
CERTS_D_ENV = "SKIFF_CERTS_D"


@dataclass(frozen=True, slots=True)
class Paths:
    """State folders under one prefix (``/`` for the system paths)."""

    prefix: Path

    @property
    def run(self) -> Path:
        return self.prefix / "run" / "skiff"

    @property
    def lib(self) -> Path:
        return self.prefix / "var" / "lib" / "skiff"

    @property
    def etc(self) -> Path:
        return self.prefix / "etc" / "skiff"

    @property
    def certs_d(self) -> Path:
        """``<etc>/certs.d/<host:port>/``: ``*.crt`` CAs, ``*.cert`` + ``*.key`` client pairs.

        ``$SKIFF_CERTS_D`` names another folder (used as given, not moved under the prefix)."""
        override = os.environ.get(CERTS_D_ENV)
        return Path(override) if override else self.etc / "certs.d"

    @property
    def lowlevel_state(self) -> Path:
        return self.run / "lowlevel"

    @property
    def highlevel_run(self) -> Path:
        return self.run / "highlevel"

    @property
    def highlevel_lib(self) -> Path:
        return self.lib / "highlevel"

    @property
    def daemon_lib(self) -> Path:
        return self.lib / "daemon"

    @property
    def netns(self) -> Path:
        return self.run / "netns"

    @property
    def api_socket(self) -> Path:
        return self.run / "skiff.sock"

    @property
    def daemon_socket(self) -> Path:
        return self.run / "daemon.sock"

    @property
    def highlevel_socket(self) -> Path:
        return self.run / "highlevel.sock"


def resolve_paths(root: str | os.PathLike[str] | None = None) -> Paths:
    """``--root`` wins, then ``$SKIFF_ROOT``, then the system paths."""
    chosen = root if root else os.environ.get(ROOT_ENV) or "/"
    return Paths(prefix=Path(chosen).absolute())
