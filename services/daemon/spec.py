"""The OCI runtime spec (config.json) of a container: the image's config, then the container's."""

from __future__ import annotations

import json
import os
import resource
from pathlib import Path
from typing import Any

from services.common.errors import InvalidArgument
from services.gen.skiff.daemon.v1 import ContainerConfig

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Docker's default capability set (moby oci/caps/defaults.go).
DEFAULT_CAPS = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL",
    "CAP_AUDIT_WRITE",
)
ALL_CAPS = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)
MASKED_PATHS = [
    "/proc/asound", "/proc/acpi", "/proc/interrupts", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
    "/sys/devices/virtual/powercap",
]
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
# Docker's default device rules: deny all, then the usual character devices.
DEVICE_RULES = [
    {"allow": False, "access": "rwm"},
    *({"allow": True, "type": "c", "major": major, "minor": minor, "access": "rwm"}
      for major, minor in ((1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 1), (5, 2), (136, -1))),
]


CGROUP_PARENT_ENV = "SKIFF_CGROUP_PARENT"


def cgroup_parent() -> str:
    parent = os.environ.get(CGROUP_PARENT_ENV, "skiff").strip("/")
    if not parent or ".." in parent.split("/"):
        raise InvalidArgument(f"{CGROUP_PARENT_ENV}: invalid cgroup parent {parent!r}")
    return parent


def normalise_cap(name: str) -> str:
    upper = name.strip().upper()
    return upper if upper.startswith("CAP_") or upper == "ALL" else f"CAP_{upper}"


def capabilities(config: ContainerConfig) -> list[str]:
    host = config.host
    if host.privileged:
        return list(ALL_CAPS)
    adds = [normalise_cap(c) for c in host.cap_add]
    drops = [normalise_cap(c) for c in host.cap_drop]
    for cap in adds + drops:
        if cap != "ALL" and cap not in ALL_CAPS:
            raise InvalidArgument(f"unknown capability: \"{cap}\"")
    caps = list(ALL_CAPS) if "ALL" in adds else list(DEFAULT_CAPS)
    caps = [] if "ALL" in drops else [c for c in caps if c not in drops]
    # Docker: an explicit add wins over a drop of ALL.
    caps += [c for c in adds if c != "ALL" and c not in caps]
    return caps


def merge_env(image_env: list[str], env: list[str]) -> list[str]:
    merged: dict[str, str] = {}
    for item in [*image_env, *env]:
        key = item.split("=", 1)[0]
        merged[key] = item
    return list(merged.values())


def resolve_args(image_config: dict[str, Any], config: ContainerConfig) -> list[str]:
    """Docker's rule: an explicit entrypoint drops the image's cmd unless a cmd is given too."""
    if config.entrypoint_set:
        entrypoint = list(config.entrypoint)
        cmd = list(config.cmd)
    else:
        entrypoint = list(image_config.get("Entrypoint") or [])
        cmd = list(config.cmd) or list(image_config.get("Cmd") or [])
    args = entrypoint + cmd
    if not args:
        raise InvalidArgument("no command specified")
    return args


def _lookup(path: Path, name: str, field: int) -> int | None:
    """A user or group name from the container's /etc/passwd or /etc/group; never outside the root."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split(":")
        if len(parts) > field and parts[0] == name:
            try:
                return int(parts[field])
            except ValueError:
                return None
    return None


def resolve_user(rootfs: Path, user: str) -> dict[str, Any]:
    """``uid``, ``name``, ``uid:gid`` or ``name:group`` (blocking: reads the rootfs; call in a thread)."""
    if not user:
        return {"uid": 0, "gid": 0}
    name, _, group = user.partition(":")
    passwd = rootfs / "etc" / "passwd"
    if name.isdigit():
        uid = int(name)
        gid = 0
        for line in _read_lines(passwd):
            parts = line.split(":")
            if len(parts) > 3 and parts[2] == name and parts[3].isdigit():
                gid = int(parts[3])
                break
    else:
        found = _lookup(passwd, name, 2)
        if found is None:
            raise InvalidArgument(f"unable to find user {name}: no matching entries in passwd file")
        uid = found
        gid = _lookup(passwd, name, 3) or 0
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            found_gid = _lookup(rootfs / "etc" / "group", group, 2)
            if found_gid is None:
                raise InvalidArgument(f"unable to find group {group}: no matching entries in group file")
            gid = found_gid
    return {"uid": uid, "gid": gid}


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()
    except OSError:
        return []


def build_spec(container_id: str, image_config: dict[str, Any], config: ContainerConfig,
               rootfs: Path) -> dict[str, Any]:
    """The whole config.json (blocking for the user lookup: call in a thread)."""
    host = config.host
    caps = capabilities(config)
    # Docker's 1048576 where allowed; never above the engine's own hard limit (raising it is refused).
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nofile = 1048576 if hard == resource.RLIM_INFINITY else min(hard, 1048576)
    env = merge_env(list(image_config.get("Env") or [DEFAULT_PATH]), list(config.env))
    hostname = config.hostname or container_id[:12]
    env = merge_env([f"HOSTNAME={hostname}"], env)
    if not any(e.startswith("PATH=") for e in env):
        env.insert(0, DEFAULT_PATH)
    if config.tty and not any(e.startswith("TERM=") for e in env):
        env.append("TERM=xterm")
    namespaces = [{"type": t} for t in ("mount", "uts", "pid", "ipc", "cgroup")]
    if host.network_mode != "host":
        namespaces.append({"type": "network"})
    resources: dict[str, Any] = {"devices": DEVICE_RULES if not host.privileged else [{"allow": True, "access": "rwm"}]}
    if host.memory > 0:
        resources["memory"] = {"limit": host.memory}
    if host.pids_limit > 0:
        resources["pids"] = {"limit": host.pids_limit}
    linux: dict[str, Any] = {
        "namespaces": namespaces,
        "resources": resources,
        # Under one parent so that every container of the engine is found (and cleaned) together;
        # SKIFF_CGROUP_PARENT gives engines sharing a host (test stacks) parents of their own.
        "cgroupsPath": f"/{cgroup_parent()}/{container_id}",
    }
    if not host.privileged:
        linux["maskedPaths"] = MASKED_PATHS
        linux["readonlyPaths"] = READONLY_PATHS
    sys_options = ["nosuid", "noexec", "nodev", "ro" if not host.privileged else "rw"]
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": config.tty,
            "user": resolve_user(rootfs, config.user or image_config.get("User") or ""),
            "args": resolve_args(image_config, config),
            "env": env,
            "cwd": config.working_dir or image_config.get("WorkingDir") or "/",
            "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": nofile, "soft": nofile}],
            "noNewPrivileges": False,
        },
        "root": {"path": str(rootfs), "readonly": host.readonly_rootfs},
        "hostname": hostname,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime",
                                                                                  "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": sys_options},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec",
                                                                                           "nodev"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        ],
        "linux": linux,
    }


def write_bundle(bundle: Path, spec: dict[str, Any]) -> None:
    """config.json written atomically (blocking: call in a thread)."""
    bundle.mkdir(parents=True, exist_ok=True)
    tmp = bundle / "config.json.tmp"
    tmp.write_text(json.dumps(spec))
    tmp.replace(bundle / "config.json")
