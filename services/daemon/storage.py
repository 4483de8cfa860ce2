"""Wiring of area D into the daemon: the volume store, the mount hooks and their gRPC services."""

from __future__ import annotations

from typing import Any

from services.daemon.archive import ArchiveService
from services.daemon.containers import ContainerManager
from services.daemon.mounts import ContainerMounts
from services.daemon.volumes import VolumesService, VolumeStore


def storage_services(manager: ContainerManager) -> list[Any]:
    """Hooks ``manager`` (mounts at create, anonymous volumes at remove); returns the services to serve."""
    store = VolumeStore(manager.paths.daemon_lib / "volumes")
    store.root.mkdir(parents=True, exist_ok=True)

    def users(name: str) -> list[str]:
        return [cid for cid, e in manager.entries.items()
                if any(p.type == "volume" and p.name == name for p in e.record.mount_points)]

    volumes = VolumesService(store, users)
    manager.mounts = ContainerMounts(store, volumes)
    return [volumes, ArchiveService(manager, store, volumes, manager.paths.run / "daemon" / "tmp")]
