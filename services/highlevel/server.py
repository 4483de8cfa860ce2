"""The highlevel runtime's gRPC server on ``<run>/highlevel.sock``."""

from __future__ import annotations

import asyncio
import importlib
import os
from typing import Any

import structlog

from services.common import grpc
from services.common.config import Config
from services.common.service import Serving, grpc_probe, listen_unix, run_service
from services.highlevel.events import EventBus
from services.highlevel.tasks import TaskManager
from services.highlevel.tasks_service import TasksService

log = structlog.get_logger(service="highlevel")

# Other parts of highlevel (images, content, snapshots) plug in here: a module with
# ``make_services(config) -> list[service]`` is loaded when present, not imported ad hoc.
PLUGIN_MODULES = ("services.highlevel.images.service",)


def plugin_services(config: Config) -> list[Any]:
    found: list[Any] = []
    for name in PLUGIN_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        found.extend(module.make_services(config))
    return found


def compile_shim() -> None:
    """Writes the shim's bytecode once, whatever PYTHONDONTWRITEBYTECODE says: a shim that
    compiles its sources on every launch pays ~12 ms and ~3 MiB of private memory per container."""
    import compileall

    # Found by path, not imported: highlevel imports no module of the shim. The shim's own
    # package and the common modules it imports.
    services_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for package in ("shim", "common"):
        compileall.compile_dir(os.path.join(services_dir, package), quiet=1)
    compileall.compile_file(os.path.join(services_dir, "__init__.py"), quiet=1)


async def serve(config: Config) -> int:
    """Runs highlevel until SIGTERM/SIGINT (services.common.service); its exit code."""
    return await run_service("highlevel", lambda: start(config))


async def start(config: Config) -> Serving:
    paths = config.paths
    await asyncio.to_thread(compile_shim)
    for folder in (paths.run, paths.highlevel_run, paths.highlevel_lib):
        folder.mkdir(parents=True, exist_ok=True)
    events = EventBus()
    manager = TaskManager(paths, config.runtime, events)
    await manager.recover()
    server = grpc.ServiceServer([TasksService(manager, events), *plugin_services(config)])
    listener = listen_unix(paths.highlevel_socket)
    await server.start(sock=listener.sock)
    log.info("started", runtime=config.runtime, tasks=len(manager.tasks))

    async def stop() -> None:
        # Stopping highlevel never stops a container: the shims stay, and the next start finds them.
        server.close()
        await server.wait_closed()
        manager.stop_zygote()

    return Serving(listener, grpc_probe, stop, status=lambda: f"{len(manager.tasks)} tasks",
                   reload=config.settings.reload)
