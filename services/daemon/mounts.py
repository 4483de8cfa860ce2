"""A container's mounts: client specs (Binds, Mounts, Tmpfs, Config.Volumes, the image's VOLUMEs)
resolved at create into MountPoints (kept in the record), then at each start into config.json mounts.

Volumes are created when first named and, as Docker does, filled from the image's content at the
target on their first use (unless ``nocopy``), in a thread.
"""

from __future__ import annotations

import asyncio
import os
import posixpath
import shutil
from pathlib import Path
from typing import Any

from services.common.errors import InvalidArgument
from services.daemon.volumes import VolumesService, VolumeStore
from services.gen.skiff.daemon.v1 import ContainerConfig, MountPoint, MountSpec

POPULATED = ".skiff-populated"
BIND_PROPAGATIONS = ("rprivate", "private", "rslave", "slave", "rshared", "shared")


def _target(path: str) -> str:
    if not path.startswith("/"):
        raise InvalidArgument(f"invalid mount config: mount path must be absolute: {path!r}")
    clean = posixpath.normpath(path)
    if clean == "/":
        raise InvalidArgument("invalid specification: destination can't be '/'")
    return clean


def _validate(spec: MountSpec) -> MountSpec:
    if spec.type not in ("bind", "volume", "tmpfs"):
        raise InvalidArgument(f"mount type unknown: {spec.type!r}")
    spec.target = _target(spec.target)
    if spec.type == "bind":
        if not spec.source.startswith("/"):
            raise InvalidArgument(f"invalid mount config for type \"bind\": invalid mount path: '{spec.source}' "
                                  "mount path must be absolute")
    elif spec.type == "tmpfs" and spec.source:
        raise InvalidArgument("invalid mount config for type \"tmpfs\": source must not be specified")
    return spec


def _mode_bits(mode: int) -> str:
    return f"mode={mode:o}"


class MountResolver:
    """Turns a container's specs into MountPoints (creating volumes) and config.json mounts."""

    def __init__(self, store: VolumeStore) -> None:
        self.store = store

    def specs(self, config: ContainerConfig, image_config: dict[str, Any]) -> list[MountSpec]:
        """Every mount, the later winning on the same target: image VOLUMEs, Config.Volumes, then the host's."""
        by_target: dict[str, MountSpec] = {}
        for path in [*(image_config.get("Volumes") or {}), *config.volumes]:
            target = _target(path)
            by_target[target] = MountSpec(type="volume", target=target)
        explicit: set[str] = set()
        for spec in config.host.mounts:
            spec = _validate(MountSpec().from_dict(spec.to_dict()))
            if spec.type == "volume" and not spec.mode:
                spec.mode = "z"  # dockerd's Mode of a volume named in Binds or Mounts (Config.Volumes': "")
            if spec.target in explicit:
                raise InvalidArgument(f"Duplicate mount point: {spec.target}")
            explicit.add(spec.target)
            by_target[spec.target] = spec
        return list(by_target.values())

    def resolve(self, specs: list[MountSpec], rootfs: Path) -> list[MountPoint]:
        """Blocking (creates folders, copies image content): call in a thread."""
        points: list[MountPoint] = []
        for spec in specs:
            if spec.type == "bind":
                if not os.path.exists(spec.source):
                    if not spec.create_source:
                        raise InvalidArgument(f"invalid mount config for type \"bind\": bind source path does "
                                              f"not exist: {spec.source}")
                    os.makedirs(spec.source, exist_ok=True)
                # The mode's propagation (`-v /src:/dst:rshared`), else Docker's default rprivate.
                propagation = next((f for f in spec.mode.split(",") if f in BIND_PROPAGATIONS), "rprivate")
                points.append(MountPoint(type="bind", source=spec.source, destination=spec.target,
                                         mode=spec.mode, rw=not spec.read_only, propagation=propagation))
            elif spec.type == "volume":
                anonymous = not spec.source
                volume = self.store.create(spec.source, {}, {}, anonymous=anonymous)
                if not spec.no_copy:
                    populate(Path(volume.mountpoint), rootfs, spec.target)
                points.append(MountPoint(type="volume", name=volume.name, source=volume.mountpoint,
                                         destination=spec.target, driver="local", mode=spec.mode,
                                         rw=not spec.read_only, anonymous=volume.anonymous))
            else:
                options = list(spec.options)
                if spec.tmpfs_size:
                    options.append(f"size={spec.tmpfs_size}")
                if spec.tmpfs_mode:
                    options.append(_mode_bits(spec.tmpfs_mode))
                points.append(MountPoint(type="tmpfs", destination=spec.target, rw=not spec.read_only,
                                         options=options))
        return points


def populate(data: Path, rootfs: Path, target: str) -> None:
    """Docker's copy-up: an empty volume gets the image's files at ``target`` on its first use."""
    marker = data.parent / POPULATED
    if marker.exists():
        return
    source = Path(os.path.join(rootfs, target.lstrip("/")))
    # Never follow a link of the image out of its root: only a real folder inside the rootfs is copied.
    if source.is_dir() and not source.is_symlink() and not any(data.iterdir()):
        real = os.path.realpath(source)
        if real == str(rootfs) or real.startswith(str(rootfs).rstrip("/") + "/"):
            shutil.copytree(source, data, symlinks=True, dirs_exist_ok=True)
            st = os.stat(source)
            os.chmod(data, st.st_mode & 0o7777)
            os.chown(data, st.st_uid, st.st_gid)
    marker.touch()


def oci_mounts(points: list[MountPoint]) -> list[dict[str, Any]]:
    """config.json entries; sorted by depth so that a parent is mounted before its children."""
    mounts: list[dict[str, Any]] = []
    for p in sorted(points, key=lambda m: m.destination.count("/")):
        if p.type == "tmpfs":
            # Docker's --tmpfs default is noexec; "exec" among the options lifts it.
            base = ["nosuid", "nodev"] + ([] if "exec" in p.options else ["noexec"])
            options = base + [o for o in p.options if o != "exec"]
            mounts.append({"destination": p.destination, "type": "tmpfs", "source": "tmpfs", "options": options})
        else:
            options = ["rbind", p.propagation or "rprivate", "rw" if p.rw else "ro"]
            mounts.append({"destination": p.destination, "type": "bind", "source": p.source, "options": options})
    return mounts


class ContainerMounts:
    """The daemon's hook points: mounts added at create, anonymous volumes released at remove."""

    def __init__(self, store: VolumeStore, volumes: VolumesService) -> None:
        self.resolver = MountResolver(store)
        self.volumes = volumes

    async def resolve(self, config: ContainerConfig, image_config: dict[str, Any], rootfs: Path) -> list[MountPoint]:
        """At create: the container's mounts for its record (volumes made and filled now); each start's
        spec mounts them (spec.build_spec)."""
        specs = self.resolver.specs(config, image_config)
        if not specs:
            return []
        return await asyncio.to_thread(self.resolver.resolve, specs, rootfs)

    async def release(self, points: list[MountPoint], remove_anonymous: bool) -> None:
        if remove_anonymous:
            await self.volumes.remove_anonymous([p.name for p in points if p.type == "volume" and p.anonymous])
