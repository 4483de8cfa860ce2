"""Settings shared by the services, read from flags and the environment; embedded defaults."""

from __future__ import annotations

import functools
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from services.common.daemon_config import LiveConfig
from services.common.paths import Paths, resolve_paths

RUNTIME_ENV = "SKIFF_RUNTIME"
DEFAULT_RUNTIME = "skiff-lowlevel"


def resolve_runtime(name_or_path: str | None = None) -> list[str]:
    """The argv prefix that runs an OCI runtime given by name (skiff-lowlevel, runc, crun) or path.

    skiff-lowlevel runs through an interpreter directly: a PATH wrapper (pyenv's shim) costs
    about 80 ms a call. It needs nothing beyond the standard library, so it runs on the
    distribution's build of this Python version when there is one (``/usr/bin/python3.X``).
    Debian's links libpython into the executable (pyenv's loads libpython3.11.so: relocations at
    start, calls through the PLT), and a ``run`` costs about 6 ms of CPU less on it here: 40 vs
    46 ms (perf stat -r 20). ``SKIFF_LOWLEVEL_PYTHON`` names another interpreter.
    """
    chosen = name_or_path or os.environ.get(RUNTIME_ENV) or DEFAULT_RUNTIME
    if chosen == DEFAULT_RUNTIME:
        return list(_lowlevel_argv(os.environ.get("SKIFF_LOWLEVEL_PYTHON") or ""))
    if os.sep in chosen:
        return [chosen]
    found = shutil.which(chosen)
    if found is None:
        raise FileNotFoundError(f"OCI runtime `{chosen}` not found on PATH")
    return [found]


@functools.lru_cache(maxsize=4)
def _lowlevel_argv(python: str) -> tuple[str, ...]:
    """skiff-lowlevel's argv for an interpreter (or the chosen one): the same for the process's
    life, and highlevel asks at every task create (a realpath and an access(2) each time)."""
    # -I -S: no site, no user paths; __main__ puts the source folder on sys.path itself.
    main = Path(__file__).resolve().parents[1] / "lowlevel" / "__main__.py"
    if not python:
        system = f"/usr/bin/python{sys.version_info[0]}.{sys.version_info[1]}"
        python = system if os.access(system, os.X_OK) else sys.executable
    return (python, "-I", "-S", str(main))


@dataclass(frozen=True, slots=True)
class Config:
    paths: Paths
    runtime: str
    # daemon.json (services.common.daemon_config): read at load, again on SIGHUP.
    settings: LiveConfig = field(default=None, compare=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.settings is None:
            object.__setattr__(self, "settings", LiveConfig(self.paths))

    @classmethod
    def load(cls, root: str | None = None, runtime: str | None = None, config_file: str | None = None) -> Config:
        """Flags, environment, then daemon.json (``config_file`` or ``<etc>/daemon.json``): ConfigError
        (services.common.daemon_config) names a bad key."""
        paths = resolve_paths(root)
        return cls(paths=paths, runtime=runtime or os.environ.get(RUNTIME_ENV) or DEFAULT_RUNTIME,
                   settings=LiveConfig(paths, config_file))


INIT_PATH_ENV = "SKIFF_INIT_PATH"
# Debian's tini package: a static init, so it runs in any image (Docker ships the same as docker-init).
DEFAULT_INIT_PATH = "/usr/bin/tini-static"


def resolve_init_path() -> str:
    """The host binary that ``docker run --init`` mounts at /sbin/docker-init (SKIFF_INIT_PATH)."""
    return os.environ.get(INIT_PATH_ENV) or DEFAULT_INIT_PATH
