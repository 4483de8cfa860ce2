"""HostConfig's namespace, device, group and memory-swap options, as a Linux dockerd 20.10 honours them.

At create (:func:`prepare`): the engine's defaults filled in (Runtime, CgroupnsMode), what this host
cannot do answered as dockerd answers it (a warning and the option dropped, or a refusal), and the
containers named by VolumesFrom and legacy Links resolved. At each start (:func:`start_context`,
:func:`apply_spec`): the pid namespace joined, the uts and cgroup namespaces left out where asked,
the device rules, swap and swappiness put in the spec. GroupAdd's gids are resolved in the rootfs
with the user (:func:`with_groups`).
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.common.errors import Conflict, Internal, InvalidArgument, NotFound
from services.daemon import links
from services.gen.skiff.daemon.v1 import ContainerConfig, DeviceMapping, HostConfig, MountSpec, State

if TYPE_CHECKING:
    from services.daemon.records import ContainerRecords
    from services.gen.skiff.daemon.v1 import Container

CGROUP_ROOT = Path("/sys/fs/cgroup")
# dockerd's answers where the kernel lacks a cgroup feature (daemon_unix.go verifyPlatformContainerResources).
NO_SWAP_LIMIT = ("Your kernel does not support swap limit capabilities or the cgroup is not mounted. "
                 "Memory limited without swap.")
NO_SWAPPINESS = ("Your kernel does not support memory swappiness capabilities or the cgroup is not mounted. "
                 "Memory swappiness discarded.")
NO_CGROUPNS = "Your kernel does not support cgroup namespaces.  Cgroup namespace setting discarded."
# overlay2's answer when the backing filesystem has no project quota (graphdriver/overlay2/overlay.go).
NO_QUOTA = "--storage-opt is supported only for overlay over xfs with 'pquota' mount option"


def cgroup_v2() -> bool:
    return (CGROUP_ROOT / "cgroup.controllers").exists()


def _swap_limit() -> bool:
    if cgroup_v2():
        return "memory" in _read(CGROUP_ROOT / "cgroup.controllers").split()
    return (CGROUP_ROOT / "memory" / "memory.memsw.limit_in_bytes").exists()


def _swappiness() -> bool:
    return not cgroup_v2() and (CGROUP_ROOT / "memory" / "memory.swappiness").exists()


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _check_memory(config: ContainerConfig, warnings: list[str]) -> None:
    host = config.host
    if host.memory > 0 and host.memory_swap != -1 and not _swap_limit():
        warnings.append(NO_SWAP_LIMIT)
        host.memory_swap = -1
    if host.memory > 0 and host.memory_swap > 0 and host.memory_swap < host.memory:
        raise InvalidArgument("Minimum memoryswap limit should be larger than memory limit, see usage")
    if host.memory == 0 and host.memory_swap > 0:
        raise InvalidArgument("You should always set the Memory limit when using Memoryswap limit, see usage")
    if host.memory_swappiness_set and not _swappiness():
        warnings.append(NO_SWAPPINESS)
        host.memory_swappiness, host.memory_swappiness_set = 0, False


def _check_engine(config: ContainerConfig, warnings: list[str]) -> None:
    host = config.host
    # host.runtime is defaulted and checked against daemon.json's runtimes before this
    # (daemon_config.apply_runtime_default).
    if not host.cgroupns_mode:
        # dockerd's default: a namespace of its own on cgroup v2, the host's on v1.
        host.cgroupns_mode = "private" if cgroup_v2() else "host"
    if host.cgroupns_mode == "private" and not os.path.exists("/proc/self/ns/cgroup"):
        warnings.append(NO_CGROUPNS)
    if (host.cpu_realtime_period or host.cpu_realtime_runtime) and \
            not (CGROUP_ROOT / "cpu" / "cpu.rt_runtime_us").exists():
        raise InvalidArgument("Your kernel does not support CPU real-time scheduler")
    if host.storage_opt:
        # Skiff's overlay snapshots sit on no project-quota filesystem: dockerd's overlay2 there refuses
        # a size, and knows no other option.
        if "size" in host.storage_opt:
            raise Internal(NO_QUOTA)
        raise Internal(f"Unknown option {sorted(host.storage_opt)[0]}")
    if host.volume_driver not in ("", "local") and (config.volumes or any(m.type == "volume" for m in host.mounts)):
        driver = host.volume_driver
        raise NotFound(f'error looking up volume plugin {driver}: plugin "{driver}" not found')


def _borrow_mounts(records: ContainerRecords, config: ContainerConfig) -> None:
    """VolumesFrom: the other containers' volumes and binds, read-only with ``:ro`` (dockerd's
    registerMountPoints: its own binds and mounts win at the same place)."""
    own = {m.target for m in config.host.mounts}
    borrowed: dict[str, MountSpec] = {}
    for entry in config.host.volumes_from:
        ref, _, mode = entry.partition(":")
        try:
            other = records.get(ref).record
        except NotFound:
            raise NotFound(f"No such container: {ref}") from None
        read_only = "ro" in mode.split(",")
        for point in other.mount_points:
            if point.destination in own or point.type == "tmpfs":
                continue
            if point.type == "volume":
                spec = MountSpec(type="volume", source=point.name, target=point.destination, no_copy=True)
            else:
                spec = MountSpec(type="bind", source=point.source, target=point.destination)
            spec.read_only = read_only or not point.rw
            borrowed[point.destination] = spec
    config.host.mounts.extend(borrowed.values())


async def prepare(records: ContainerRecords, config: ContainerConfig) -> list[str]:
    """dockerd's create-time checks and adjustments of these options; the create's warnings."""
    warnings: list[str] = []
    _check_engine(config, warnings)
    _check_memory(config, warnings)
    _borrow_mounts(records, config)
    links.register(records, config)
    return warnings


@dataclass(frozen=True, slots=True)
class StartContext:
    """What a start's spec takes from other containers."""

    pid_path: str = ""  # the pid namespace to join (PidMode container:<ref>)
    ipc_path: str = ""  # the ipc namespace to join (IpcMode container:<ref>)
    link_env: Sequence[str] = ()  # legacy links' variables


def _running_donor(records: ContainerRecords, ref: str, what: str) -> Container:
    """The running container whose namespace a start joins (dockerd's getPidContainer/getIpcContainer)."""
    try:
        other = records.get(ref)
    except NotFound:
        raise NotFound(f"{what}: No such container: {ref}") from None
    if other.record.state.status == State.RESTARTING:
        raise Conflict(f"{what}: Container {other.record.id} is restarting, wait until the container is running")
    if not other.running or not other.record.state.pid:
        raise Conflict(f"{what}: container {other.record.id} is not running")
    return other.record


def start_context(records: ContainerRecords, record: Container) -> StartContext:
    """At a start, after networking: the namespaces to join and the links' variables."""
    host = record.config.host
    pid_path = ipc_path = ""
    if host.pid_mode.startswith("container:"):
        ref = host.pid_mode.partition(":")[2]
        donor = _running_donor(records, ref, f"cannot join PID of a non running container: {ref}")
        pid_path = f"/proc/{donor.state.pid}/ns/pid"
    if host.ipc_mode.startswith("container:"):
        ref = host.ipc_mode.partition(":")[2]
        donor = _running_donor(records, ref, f"can't join IPC of container {ref}")
        if donor.config.host.ipc_mode not in ("shareable", "host"):
            raise Conflict(f"can't join IPC of container {ref}: non-shareable IPC (hint: use IpcMode:shareable "
                           "for the donor container)")
        ipc_path = f"/proc/{donor.state.pid}/ns/ipc"
    return StartContext(pid_path=pid_path, ipc_path=ipc_path, link_env=tuple(links.environment(records, record)))


def _device_rule(rule: str) -> dict[str, Any]:
    kind, numbers, access = rule.split(" ")
    major, minor = numbers.split(":")
    return {"allow": True, "type": kind, "major": -1 if major == "*" else int(major),
            "minor": -1 if minor == "*" else int(minor), "access": access}


def apply_spec(spec: dict[str, Any], config: ContainerConfig, context: StartContext | None) -> None:
    """These options into a built spec (``context`` None at create: nothing to join yet)."""
    host = config.host
    linux = spec["linux"]
    namespaces = [n for n in linux["namespaces"] if n["type"] not in ("pid", "uts", "cgroup", "ipc")]
    if host.pid_mode.startswith("container:"):
        if context is not None and context.pid_path:
            namespaces.append({"type": "pid", "path": context.pid_path})
    elif host.pid_mode != "host":
        namespaces.append({"type": "pid"})
    if host.uts_mode == "host":
        spec.pop("hostname", None)
    else:
        namespaces.append({"type": "uts"})
    if host.cgroupns_mode != "host":
        namespaces.append({"type": "cgroup"})
    if host.ipc_mode.startswith("container:"):
        if context is not None and context.ipc_path:
            namespaces.append({"type": "ipc", "path": context.ipc_path})
    elif host.ipc_mode != "host":
        namespaces.append({"type": "ipc"})
    linux["namespaces"] = namespaces
    _shm(spec, host)
    if host.oom_score_adj:
        spec["process"]["oomScoreAdj"] = host.oom_score_adj
    resources = linux["resources"]
    if host.devices:
        made, allowed = devices_of(host.devices)
        linux["devices"] = [*(linux.get("devices") or []), *made]
        if not host.privileged:
            resources["devices"] = [*resources["devices"], *allowed]
    if host.device_cgroup_rules and not host.privileged:
        resources["devices"] = [*resources["devices"], *(_device_rule(r) for r in host.device_cgroup_rules)]
    memory = resources.get("memory") or {}
    if host.memory_reservation:
        memory["reservation"] = host.memory_reservation
    if host.oom_kill_disable:
        memory["disableOOMKiller"] = True
    if host.memory_swap and _swap_limit():
        memory["swap"] = host.memory_swap
    if host.memory_swappiness_set:
        memory["swappiness"] = host.memory_swappiness
    if memory:
        resources["memory"] = memory
    cpu = resources.get("cpu") or {}
    if host.cpu_realtime_period:
        cpu["realtimePeriod"] = host.cpu_realtime_period
    if host.cpu_realtime_runtime:
        cpu["realtimeRuntime"] = host.cpu_realtime_runtime
    if cpu:
        resources["cpu"] = cpu
    if context is not None and context.link_env:
        spec["process"]["env"] = _with_link_env(spec["process"]["env"], context.link_env)


def _device(st: os.stat_result, in_container: str, permissions: str) -> tuple[dict[str, Any], ...]:
    kind = "c" if stat.S_ISCHR(st.st_mode) else "b"
    major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
    return ({"path": in_container, "type": kind, "major": major, "minor": minor, "fileMode": stat.S_IMODE(st.st_mode),
             "uid": st.st_uid, "gid": st.st_gid},
            {"allow": True, "type": kind, "major": major, "minor": minor, "access": permissions})


def devices_of(mappings: Sequence[DeviceMapping]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """--device as dockerd's DevicesFromPath (blocking: stats host paths): a device node (a link to one
    followed), or every device under a folder; (linux.devices entries, their cgroup allow rules)."""
    made: list[dict[str, Any]] = []
    allowed: list[dict[str, Any]] = []
    for mapping in mappings:
        on_host = os.path.realpath(mapping.path_on_host)
        in_container = mapping.path_in_container or mapping.path_on_host
        permissions = mapping.cgroup_permissions or "rwm"
        found: list[tuple[dict[str, Any], ...]] = []
        try:
            st = os.stat(on_host)
        except OSError as exc:
            raise InvalidArgument(f"error gathering device information while adding custom device "
                                  f"\"{mapping.path_on_host}\": {exc.strerror.lower()}") from None
        if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            found.append(_device(st, in_container, permissions))
        elif stat.S_ISDIR(st.st_mode):
            for folder, _, names in os.walk(on_host):
                for name in sorted(names):
                    path = os.path.join(folder, name)
                    with contextlib.suppress(OSError):
                        child = os.lstat(path)
                        if stat.S_ISCHR(child.st_mode) or stat.S_ISBLK(child.st_mode):
                            found.append(_device(child, in_container + path[len(on_host):], permissions))
        if not found:
            raise InvalidArgument(f"error gathering device information while adding custom device "
                                  f"\"{mapping.path_on_host}\": not a device node")
        for device, rule in found:
            made.append(device)
            allowed.append(rule)
    return made, allowed


def _shm(spec: dict[str, Any], host: HostConfig) -> None:
    """/dev/shm as IpcMode and ShmSize want it: the host's (host), none (none), else the engine's tmpfs
    sized ShmSize. A user's own mount at /dev/shm stays as it is."""
    mounts = spec.get("mounts") or []
    ours = next((m for m in mounts if m.get("destination") == "/dev/shm" and m.get("source") == "shm"), None)
    if ours is None:
        return
    if host.ipc_mode == "none":
        mounts.remove(ours)
    elif host.ipc_mode == "host":
        ours.update(type="bind", source="/dev/shm", options=["rbind", "rprivate"])
    elif host.shm_size:
        size = f"size={host.shm_size // 1024}k" if host.shm_size % 1024 == 0 else f"size={host.shm_size}"
        ours["options"] = [o for o in ours["options"] if not o.startswith("size=")] + [size]


def _with_link_env(env: list[str], link_env: Sequence[str]) -> list[str]:
    """dockerd's order: the links' variables after its own, the container's (image and Config.Env,
    already in ``env``) winning over a link's of the same name."""
    taken = {item.partition("=")[0] for item in env}
    return [*env, *(item for item in link_env if item.partition("=")[0] not in taken)]


def with_groups(user: dict[str, Any], rootfs: Path, group_add: Sequence[str], spec: str = "") -> dict[str, Any]:
    """The process's additional gids as dockerd's getUser makes them (blocking: reads the rootfs): the
    groups of the container's /etc/group listing the user (``spec``, the user as configured, without an
    explicit group), then GroupAdd's, numbers as given and names from that file."""
    name, _, group = spec.partition(":")
    if not group_add and (not name or group):
        return user
    groups: dict[str, int] = {}
    members: list[int] = []
    if name.isdigit():
        name = next((line.split(":")[0] for line in _read(rootfs / "etc" / "passwd").splitlines()
                     if line.split(":")[2:3] == [name]), "")
    for line in _read(rootfs / "etc" / "group").splitlines():
        parts = line.split(":")
        if len(parts) >= 3 and parts[2].isdigit():
            groups.setdefault(parts[0], int(parts[2]))
            if name and not group and len(parts) >= 4 and name in parts[3].split(","):
                members.append(int(parts[2]))
    gids = list(user.get("additionalGids") or [])
    for gid in members:
        if gid not in gids:
            gids.append(gid)
    for wanted in group_add:
        if wanted.isdigit():
            gid = int(wanted)
        elif wanted in groups:
            gid = groups[wanted]
        else:
            raise InvalidArgument(f"Unable to find group {wanted}: no matching entries in group file")
        if gid not in gids:
            gids.append(gid)
    return {**user, "additionalGids": gids} if gids else user
