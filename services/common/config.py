"""Settings shared by the services, read from flags and the environment; embedded defaults."""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from services.common.paths import Paths, resolve_paths

RUNTIME_ENV = "SKIFF_RUNTIME"
DEFAULT_RUNTIME = "skiff-lowlevel"


def resolve_runtime(name_or_path: str | None = None) -> list[str]:
    """The argv prefix that runs an OCI runtime given by name (skiff-lowlevel, runc, crun) or path.

    skiff-lowlevel runs through this interpreter directly: a PATH wrapper (pyenv's shim) costs
    about 80 ms a call.
    """
    chosen = name_or_path or os.environ.get(RUNTIME_ENV) or DEFAULT_RUNTIME
    if chosen == DEFAULT_RUNTIME:
        # -I -S: no site, no user paths; __main__ puts the source folder on sys.path itself.
        main = Path(__file__).resolve().parents[1] / "lowlevel" / "__main__.py"
        return [sys.executable, "-I", "-S", str(main)]
    if os.sep in chosen:
        return [chosen]
    found = shutil.which(chosen)
    if found is None:
        raise FileNotFoundError(f"OCI runtime `{chosen}` not found on PATH")
    return [found]


@dataclass(frozen=True, slots=True)
class Config:
    paths: Paths
    runtime: str

    @classmethod
    def load(cls, root: str | None = None, runtime: str | None = None) -> Config:
        return cls(paths=resolve_paths(root), runtime=runtime or os.environ.get(RUNTIME_ENV) or DEFAULT_RUNTIME)


INIT_PATH_ENV = "SKIFF_INIT_PATH"
# Debian's tini package: a static init, so it runs in any image (Docker ships the same as docker-init).
DEFAULT_INIT_PATH = "/usr/bin/tini-static"


def resolve_init_path() -> str:
    """The host binary that ``docker run --init`` mounts at /sbin/docker-init (SKIFF_INIT_PATH)."""
    return os.environ.get(INIT_PATH_ENV) or DEFAULT_INIT_PATH
