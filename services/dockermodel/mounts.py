"""Mounts: HostConfig.Binds / Mounts / Tmpfs and Config.Volumes of a create request as MountSpecs for the daemon;
and inspect's ``Mounts`` from the daemon's MountPoints."""

from __future__ import annotations

import posixpath
from typing import Any

from services.common.errors import InvalidArgument
from services.gen.skiff.daemon.v1 import Container, ContainerConfig, MountPoint, MountSpec


def mount_target(path: str) -> str:
    """A mount's destination in the container: absolute, normalised, not ``/`` itself."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise InvalidArgument(f"invalid mount config: mount path must be absolute: {path!r}")
    clean = posixpath.normpath(path)
    if clean == "/":
        raise InvalidArgument("invalid specification: destination can't be '/'")
    return clean


def parse_bind(text: str) -> MountSpec:
    """``/host:/path[:ro]``, ``name:/path[:ro]`` or ``/path`` (an anonymous volume)."""
    parts = text.split(":")
    if len(parts) == 1:
        return MountSpec(type="volume", target=mount_target(parts[0]))
    if len(parts) > 3 or not parts[0] or not parts[1]:
        raise InvalidArgument(f"invalid volume specification: '{text}'")
    mode = parts[2] if len(parts) == 3 else ""
    flags = set(mode.split(",")) if mode else set()
    unknown = flags - {"ro", "rw", "z", "Z", "nocopy", "rprivate", "private", "rslave", "slave", "rshared", "shared"}
    if unknown or {"ro", "rw"} <= flags:
        raise InvalidArgument(f"invalid mode: {mode}")
    kind = "bind" if parts[0].startswith("/") else "volume"
    source = posixpath.normpath(parts[0]) if kind == "bind" else parts[0]
    return MountSpec(type=kind, source=source, target=mount_target(parts[1]), read_only="ro" in flags,
                     no_copy="nocopy" in flags, mode=mode, create_source=kind == "bind")


def parse_tmpfs(target: str, options: str) -> MountSpec:
    opts = [o for o in options.split(",") if o]
    for opt in opts:
        key = opt.split("=", 1)[0]
        if key not in ("size", "mode", "exec", "noexec", "suid", "nosuid", "dev", "nodev", "ro", "rw", "uid", "gid",
                       "nr_inodes", "nr_blocks", "mpol"):
            raise InvalidArgument(f"invalid tmpfs option {opt!r}")
    return MountSpec(type="tmpfs", target=mount_target(target), options=opts, read_only="ro" in opts)


def _mount(item: Any) -> MountSpec:
    """One entry of HostConfig.Mounts (Docker's mount.Mount)."""
    if not isinstance(item, dict):
        raise InvalidArgument("invalid Mounts: expected a list of objects")
    kind = item.get("Type") or ""
    source = item.get("Source") or ""
    target = item.get("Target") or item.get("Destination") or ""
    if kind not in ("bind", "volume", "tmpfs"):
        raise InvalidArgument(f"mount type unknown: {kind!r}")
    if not isinstance(source, str):
        raise InvalidArgument("invalid mount config: Source must be a string")
    spec = MountSpec(type=kind, source=source, target=mount_target(target), read_only=bool(item.get("ReadOnly")))
    volume_options = item.get("VolumeOptions") or {}
    tmpfs_options = item.get("TmpfsOptions") or {}
    if not isinstance(volume_options, dict) or not isinstance(tmpfs_options, dict):
        raise InvalidArgument("invalid mount config: options must be objects")
    spec.no_copy = bool(volume_options.get("NoCopy"))
    labels = volume_options.get("Labels") or {}
    if isinstance(labels, dict):
        spec.labels = {str(k): str(v) for k, v in labels.items()}
    size, mode = tmpfs_options.get("SizeBytes") or 0, tmpfs_options.get("Mode") or 0
    if isinstance(size, bool) or not isinstance(size, int) or isinstance(mode, bool) or not isinstance(mode, int):
        raise InvalidArgument("invalid mount config: TmpfsOptions SizeBytes and Mode must be integers")
    if not 0 <= size < 2**63 or not 0 <= mode <= 0o7777:
        raise InvalidArgument("invalid mount config: TmpfsOptions out of range")
    spec.tmpfs_size, spec.tmpfs_mode = size, mode
    if kind != "tmpfs" and tmpfs_options:
        raise InvalidArgument(f"invalid mount config: TmpfsOptions given for type {kind!r}")
    return spec


def mount_specs(body: dict[str, Any], host: dict[str, Any]) -> tuple[list[MountSpec], list[str]]:
    """(HostConfig mounts, Config.Volumes paths); the same target twice is refused, as Docker does."""
    specs: list[MountSpec] = []
    binds = host.get("Binds") or []
    mounts = host.get("Mounts") or []
    tmpfs = host.get("Tmpfs") or {}
    volumes = body.get("Volumes") or {}
    if not isinstance(binds, list) or not all(isinstance(b, str) for b in binds):
        raise InvalidArgument("invalid Binds: expected a list of strings")
    if not isinstance(mounts, list):
        raise InvalidArgument("invalid Mounts: expected a list")
    if not isinstance(tmpfs, dict) or not all(isinstance(v, str) for v in tmpfs.values()):
        raise InvalidArgument("invalid Tmpfs: expected an object of strings")
    if not isinstance(volumes, dict):
        raise InvalidArgument("invalid Volumes: expected an object")
    specs += [parse_bind(b) for b in binds]
    specs += [_mount(m) for m in mounts]
    specs += [parse_tmpfs(str(k), v) for k, v in tmpfs.items()]
    seen: set[str] = set()
    for spec in specs:
        if spec.target in seen:
            raise InvalidArgument(f"Duplicate mount point: {spec.target}")
        seen.add(spec.target)
    return specs, [mount_target(str(v)) for v in volumes]


def _shown(c: Container) -> list[MountPoint]:
    """The mount points dockerd lists: not the tmpfs of HostConfig.Tmpfs (--tmpfs), only --mount's."""
    return [p for p in c.mount_points if p.type != "tmpfs" or p.destination not in c.config.host.tmpfs]


def inspect_mounts(c: Container) -> list[dict[str, Any]]:
    return [_mount_json(p) for p in _shown(c)]


def _mount_json(p: MountPoint) -> dict[str, Any]:
    if p.type == "volume":
        return {"Type": "volume", "Name": p.name, "Source": p.source, "Destination": p.destination,
                "Driver": p.driver, "Mode": p.mode, "RW": p.rw, "Propagation": ""}
    if p.type == "bind":
        return {"Type": "bind", "Source": p.source, "Destination": p.destination, "Mode": p.mode, "RW": p.rw,
                "Propagation": p.propagation}
    return {"Type": "tmpfs", "Source": "", "Destination": p.destination, "Mode": ",".join(p.options), "RW": p.rw,
            "Propagation": ""}


def binds(c: Container) -> list[str] | None:
    """HostConfig.Binds as the client gave them (what docker inspect shows back)."""
    found = [f"{m.source}:{m.target}" + (f":{m.mode}" if m.mode else "") for m in c.config.host.mounts
             if m.mode or m.create_source]
    return found or None


def apply_request(body: dict[str, Any], host: dict[str, Any], config: ContainerConfig) -> None:
    """The create request's mounts into ``config``."""
    config.host.mounts, config.volumes = mount_specs(body, host)


def summary_mounts(c: Container) -> list[dict[str, Any]]:
    return [{k: v for k, v in _mount_json(p).items() if k != "Mode" or p.type != "tmpfs"} for p in _shown(c)]
