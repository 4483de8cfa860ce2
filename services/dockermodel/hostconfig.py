"""HostConfig's namespace, device, group, memory-swap, link and runtime fields: read from a create body
into the daemon's HostConfig (checked as dockerd's API checks them), and echoed back by inspect with
dockerd 20.10's zero values for the fields Skiff does not keep."""

from __future__ import annotations

import re
from typing import Any

from services.common.errors import InvalidArgument
from services.dockermodel.fields import integer, string, string_list
from services.gen.skiff.daemon.v1 import Container, DeviceMapping, HostConfig

# dockerd's deviceCgroupRuleRegex (oci/devices_linux.go): type, major:minor (or *), access.
DEVICE_RULE_RE = re.compile(r"^([acb]) ([0-9]+|\*):([0-9]+|\*) ([rwm]{1,3})$")
VOLUMES_FROM_MODES = ("", "ro", "rw", "z", "Z")
DEFAULT_SHM_SIZE = 64 * 1024 * 1024
MIN_MEMORY = 6 * 1024 * 1024  # dockerd's linuxMinMemory
# What a 20.10 engine shows for the paths it masks (inspect echoes them; the spec sets them).
MASKED = ["/proc/asound", "/proc/acpi", "/proc/interrupts", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
          "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
          "/sys/devices/virtual/powercap"]
READONLY = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]


def _mode(value: Any, field: str, allowed: tuple[str, ...], what: str) -> str:
    """A namespace mode: one of ``allowed``, or ``container:<ref>`` where ``container`` is allowed."""
    mode = string(value, field)
    kind, sep, ref = mode.partition(":")
    if mode in allowed or (sep and kind == "container" and "container" in allowed and ref):
        return mode
    raise InvalidArgument(f"invalid {what}: {mode}")


def _group_add(value: Any) -> list[str]:
    """GroupAdd: gids or names (docker-py sends strings; numbers are accepted as the CLI's would be)."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(g, (str, int)) and not isinstance(g, bool) for g in value):
        raise InvalidArgument("invalid GroupAdd: expected a list of strings")
    return [str(g) for g in value]


def _volumes_from(value: Any) -> list[str]:
    """VolumesFrom: ``<container>[:ro|rw]`` (dockerd's ParseVolumesFrom)."""
    entries = string_list(value, "VolumesFrom", allow_single=False)
    for entry in entries:
        name, _, mode = entry.partition(":")
        if not name or any(m not in VOLUMES_FROM_MODES for m in mode.split(",")) or \
                {"ro", "rw"} <= set(mode.split(",")):
            raise InvalidArgument(f'invalid mode: "{mode}"' if name else f"invalid volumes-from: {entry!r}")
    return entries


def _device_rules(value: Any) -> list[str]:
    rules = string_list(value, "DeviceCgroupRules", allow_single=False)
    for rule in rules:
        if not DEVICE_RULE_RE.match(rule):
            raise InvalidArgument(f"invalid device cgroup rule format: '{rule}'")
    return rules


def _string_map(value: Any, field: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise InvalidArgument(f"invalid {field}: expected an object of strings")
    return {str(k): v for k, v in value.items()}


def _swappiness(value: Any) -> tuple[int, bool]:
    """(value, set): null and -1 (dockerd's fixMemorySwappiness) leave it unset; else 0-100."""
    number = integer(value, "MemorySwappiness")
    if value is None or number == -1:
        return 0, False
    if not 0 <= number <= 100:
        raise InvalidArgument(f"Invalid value: {number}, valid memory swappiness range is 0-100")
    return number, True


def _any_case(body: dict[str, Any], key: str) -> Any:
    if key in body:
        return body[key]
    return next((v for k, v in body.items() if isinstance(k, str) and k.lower() == key.lower()), None)


def _devices(value: Any) -> list[DeviceMapping]:
    """HostConfig.Devices: [{"PathOnHost", "PathInContainer", "CgroupPermissions"}] (looked up by the daemon)."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(d, dict) for d in value):
        raise InvalidArgument("invalid Devices: expected a list of objects")
    found = []
    for item in value:
        on_host = string(item.get("PathOnHost"), "Devices.PathOnHost")
        in_container = string(item.get("PathInContainer"), "Devices.PathInContainer")
        permissions = string(item.get("CgroupPermissions"), "Devices.CgroupPermissions")
        if not on_host.startswith("/") or (in_container and not in_container.startswith("/")):
            raise InvalidArgument(f"invalid device mapping: {on_host}:{in_container}: paths must be absolute")
        if permissions and (set(permissions) - set("rwm") or len(set(permissions)) != len(permissions)):
            raise InvalidArgument(f"invalid device mode: {permissions}")
        found.append(DeviceMapping(path_on_host=on_host, path_in_container=in_container,
                                   cgroup_permissions=permissions))
    return found


def _ipc_shm_oom(host_body: dict[str, Any], host: HostConfig) -> None:
    """IpcMode, ShmSize, OomScoreAdj, MemoryReservation, OomKillDisable (dockerd's checks)."""
    host.ipc_mode = _mode(host_body.get("IpcMode"), "IpcMode", ("", "private", "shareable", "host", "none",
                                                                "container"), "IPC mode")
    host.shm_size = integer(host_body.get("ShmSize"), "ShmSize")
    if host.shm_size < 0:
        raise InvalidArgument("SHM size can not be less than 0")
    host.oom_score_adj = integer(host_body.get("OomScoreAdj"), "OomScoreAdj", bits=32)
    if not -1000 <= host.oom_score_adj <= 1000:
        raise InvalidArgument(f"Invalid value {host.oom_score_adj}, range for oom score adj is [-1000, 1000]")
    host.memory_reservation = integer(host_body.get("MemoryReservation"), "MemoryReservation")
    if 0 < host.memory_reservation < MIN_MEMORY:
        raise InvalidArgument("Minimum memory reservation allowed is 6MB")
    if host.memory > 0 and host.memory_reservation > host.memory:
        raise InvalidArgument("Minimum memory limit can not be less than memory reservation limit, see usage")
    kill_disable = host_body.get("OomKillDisable")
    if kill_disable is not None and not isinstance(kill_disable, bool):
        raise InvalidArgument("invalid OomKillDisable: expected a boolean")
    host.oom_kill_disable = bool(kill_disable)


def apply_request(body: dict[str, Any], host_body: dict[str, Any], host: HostConfig) -> None:
    """The create body's fields of this module into ``host``."""
    host.pid_mode = _mode(host_body.get("PidMode"), "PidMode", ("", "host", "container"), "PID mode")
    host.uts_mode = _mode(host_body.get("UTSMode"), "UTSMode", ("", "host"), "UTS mode")
    if host.uts_mode == "host" and body.get("Hostname"):
        raise InvalidArgument("conflicting options: hostname and the UTS mode")
    host.cgroupns_mode = _mode(host_body.get("CgroupnsMode"), "CgroupnsMode", ("", "private", "host"),
                               "cgroup namespace mode")
    host.volumes_from = _volumes_from(host_body.get("VolumesFrom"))
    host.device_cgroup_rules = _device_rules(host_body.get("DeviceCgroupRules"))
    host.group_add = _group_add(host_body.get("GroupAdd"))
    host.memory_swap = integer(host_body.get("MemorySwap"), "MemorySwap")
    if host.memory_swap < -1:
        raise InvalidArgument(f"invalid MemorySwap: {host.memory_swap}")
    host.memory_swappiness, host.memory_swappiness_set = _swappiness(host_body.get("MemorySwappiness"))
    host.tmpfs = _string_map(host_body.get("Tmpfs"), "Tmpfs")
    host.runtime = string(host_body.get("Runtime"), "Runtime")
    host.isolation = string(host_body.get("Isolation"), "Isolation")
    if host.isolation not in ("", "default"):
        raise InvalidArgument(f"Invalid isolation: \"{host.isolation}\" - linux only supports 'default'")
    host.volume_driver = string(host_body.get("VolumeDriver"), "VolumeDriver")
    # docker-py spells these "CPURealtime...": Go's JSON decoding matches keys case-insensitively.
    host.cpu_realtime_runtime = integer(_any_case(host_body, "CpuRealtimeRuntime"), "CpuRealtimeRuntime")
    host.cpu_realtime_period = integer(_any_case(host_body, "CpuRealtimePeriod"), "CpuRealtimePeriod")
    if host.cpu_realtime_runtime and host.cpu_realtime_period and \
            host.cpu_realtime_runtime > host.cpu_realtime_period:
        raise InvalidArgument("cpu real-time runtime cannot be higher than cpu real-time period")
    host.storage_opt = _string_map(host_body.get("StorageOpt"), "StorageOpt")
    _ipc_shm_oom(host_body, host)
    host.devices = _devices(host_body.get("Devices"))
    host.links = string_list(host_body.get("Links"), "Links", allow_single=False)
    for link in host.links:
        name, _, alias = link.partition(":")
        if not name.strip("/") or (":" in link and not alias):
            raise InvalidArgument(f"invalid link format: {link!r}")
    if host.links and host.network_mode == "host":
        raise InvalidArgument("conflicting options: host type networking can't be used with links. "
                              "This would result in undefined behavior")
    if host.links and host.network_mode.startswith("container:"):
        raise InvalidArgument("conflicting options: container type network can't be used with links. "
                              "This would result in undefined behavior")


def inspect_fields(c: Container) -> dict[str, Any]:
    """Inspect's HostConfig fields of this module, and dockerd's zero values of those Skiff has not."""
    host = c.config.host
    return {
        "ContainerIDFile": "",
        "VolumeDriver": host.volume_driver,
        "VolumesFrom": list(host.volumes_from) or None,
        "CgroupnsMode": host.cgroupns_mode,
        "GroupAdd": list(host.group_add) or None,
        "IpcMode": host.ipc_mode or "private",
        "Cgroup": "",
        # Legacy links as dockerd renders its link index: "/<child>:/<this container>/<alias>" (none on a
        # user network, where links belong to the endpoint).
        "Links": [_link_json(c.name, link) for link in host.links if _legacy_mode(host)] or None,
        "OomScoreAdj": host.oom_score_adj,
        "PidMode": host.pid_mode,
        "UTSMode": host.uts_mode,
        "UsernsMode": "",
        "ShmSize": host.shm_size or DEFAULT_SHM_SIZE,
        "Runtime": host.runtime or "runc",
        "ConsoleSize": [0, 0],
        "Isolation": host.isolation,
        "CgroupParent": "",
        "BlkioWeight": 0,
        "BlkioWeightDevice": [],
        "BlkioDeviceReadBps": None,
        "BlkioDeviceWriteBps": None,
        "BlkioDeviceReadIOps": None,
        "BlkioDeviceWriteIOps": None,
        "CpuRealtimePeriod": host.cpu_realtime_period,
        "CpuRealtimeRuntime": host.cpu_realtime_runtime,
        "Devices": [{"PathOnHost": d.path_on_host, "PathInContainer": d.path_in_container,
                     "CgroupPermissions": d.cgroup_permissions} for d in host.devices],
        "DeviceCgroupRules": list(host.device_cgroup_rules) or None,
        "DeviceRequests": None,
        "KernelMemory": 0,
        "KernelMemoryTCP": 0,
        "MemoryReservation": host.memory_reservation,
        "MemorySwap": host.memory_swap,
        "MemorySwappiness": host.memory_swappiness if host.memory_swappiness_set else None,
        "OomKillDisable": host.oom_kill_disable,
        "CpuCount": 0,
        "CpuPercent": 0,
        "IOMaximumIOps": 0,
        "IOMaximumBandwidth": 0,
        "MaskedPaths": None if host.privileged else MASKED,
        "ReadonlyPaths": None if host.privileged else READONLY,
        **({"Tmpfs": dict(host.tmpfs)} if host.tmpfs else {}),
        **({"StorageOpt": dict(host.storage_opt)} if host.storage_opt else {}),
    }


def _legacy_mode(host: HostConfig) -> bool:
    return host.network_mode in ("", "default", "bridge")


def _link_json(own_name: str, link: str) -> str:
    name, _, alias = link.partition(":")
    name = name.strip("/")
    return f"/{name}:/{own_name}/{(alias or name).strip('/')}"

